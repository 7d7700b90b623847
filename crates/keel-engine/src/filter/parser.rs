//! Recursive descent with precedence climbing for the binary operators.
//!
//! Two bounds keep it and the tree it builds small: the parser's own nesting (brackets,
//! arguments, unary operators) and the height of every node it builds are both at most
//! [`EXPRESSION_DEPTH_MAX`]. Each error names the column and what was expected there.

use super::expr::{Comparison, Expr, Literal, StringMethod};
use super::lexer::{self, Kind, Token};
use super::{EXPRESSION_BYTES_MAX, EXPRESSION_DEPTH_MAX, is_attribute_name};

/// Parses a whole expression; the error is the message to put after the filter path.
pub(super) fn parse(source: &str) -> Result<Expr, String> {
    if source.len() > EXPRESSION_BYTES_MAX {
        let length = source.len();
        return Err(format!(
            "expression is {length} bytes, longer than the limit of {EXPRESSION_BYTES_MAX}"
        ));
    }
    let tokens = lexer::tokenize(source)?;
    let mut parser = Parser {
        tokens,
        position: 0,
        depth: 0,
    };
    let root = parser.expression()?;
    parser.expect(&Kind::End, "an operator or the end of the expression")?;
    Ok(root)
}

/// A binary operator, before it becomes a node.
#[derive(Debug, Clone, Copy)]
enum Binary {
    Or,
    And,
    Compare(Comparison),
    In,
}

impl Binary {
    /// The operator a token stands for, with its precedence (higher binds tighter).
    fn from_kind(kind: &Kind) -> Option<(Binary, u8)> {
        let operator = match kind {
            Kind::Or => return Some((Binary::Or, 1)),
            Kind::And => return Some((Binary::And, 2)),
            Kind::In => return Some((Binary::In, 3)),
            Kind::Equal => Comparison::Equal,
            Kind::NotEqual => Comparison::NotEqual,
            Kind::Less => Comparison::Less,
            Kind::LessEqual => Comparison::LessEqual,
            Kind::Greater => Comparison::Greater,
            Kind::GreaterEqual => Comparison::GreaterEqual,
            _ => return None,
        };
        Some((Binary::Compare(operator), 3))
    }
}

/// The token cursor. `tokens` always ends with [`Kind::End`], and the cursor never passes it.
struct Parser {
    tokens: Vec<Token>,
    position: usize,
    /// How deeply `expression` and unary operators are nested right now.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        let last = self.tokens.len() - 1;
        &self.tokens[self.position.min(last)]
    }

    /// Takes the current token; at the end it keeps returning [`Kind::End`].
    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != Kind::End {
            self.position += 1;
        }
        token
    }

    fn expect(&mut self, kind: &Kind, expected: &str) -> Result<(), String> {
        if &self.peek().kind == kind {
            self.advance();
            Ok(())
        } else {
            Err(unexpected(self.peek(), expected))
        }
    }

    /// Goes one level deeper, failing past the limit.
    fn enter(&mut self, column: usize) -> Result<(), String> {
        self.depth += 1;
        if self.depth > EXPRESSION_DEPTH_MAX {
            return Err(too_deep(column));
        }
        Ok(())
    }

    /// A full expression, as inside brackets or an argument list.
    fn expression(&mut self) -> Result<Expr, String> {
        self.enter(self.peek().column)?;
        let expr = self.binary(1)?;
        self.depth -= 1;
        Ok(expr)
    }

    /// Operators of at least `precedence_min`, all left-associative.
    fn binary(&mut self, precedence_min: u8) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while let Some((operator, precedence)) = Binary::from_kind(&self.peek().kind) {
            if precedence < precedence_min {
                break;
            }
            let column = self.advance().column;
            let right = self.binary(precedence + 1)?;
            left = join(operator, left, right, column)?;
        }
        Ok(left)
    }

    /// `!x`, `-x` or a postfix expression.
    fn unary(&mut self) -> Result<Expr, String> {
        let negate = match self.peek().kind {
            Kind::Bang => false,
            Kind::Minus => true,
            _ => return self.postfix(),
        };
        let column = self.advance().column;
        self.enter(column)?;
        let operand = self.unary()?;
        self.depth -= 1;
        let node = match (negate, operand) {
            (true, Expr::Literal(Literal::Number(number))) => {
                return Ok(Expr::Literal(Literal::Number(-number)));
            }
            (true, operand) => Expr::Negate(Box::new(operand)),
            (false, operand) => Expr::Not(Box::new(operand)),
        };
        checked(node, column)
    }

    /// A primary followed by any number of `.field`, `.method(...)` and `[index]`.
    fn postfix(&mut self) -> Result<Expr, String> {
        let mut target = self.primary()?;
        loop {
            let column = self.peek().column;
            target = match self.peek().kind {
                Kind::Dot => {
                    self.advance();
                    self.selection(target)?
                }
                Kind::LeftBracket => {
                    self.advance();
                    let index = self.expression()?;
                    self.expect(&Kind::RightBracket, "']'")?;
                    Expr::Index(Box::new(target), Box::new(index))
                }
                _ => return Ok(target),
            };
            target = checked(target, column)?;
        }
    }

    /// What follows a `.`: a field name, or a method call.
    fn selection(&mut self, target: Expr) -> Result<Expr, String> {
        let token = self.advance();
        let Kind::Ident(name) = token.kind else {
            return Err(unexpected(&token, "a field name after '.'"));
        };
        if self.peek().kind != Kind::LeftParen {
            // Attributes other than `data` are strings, booleans or integers: a field of one
            // never exists, and `type == order.created` meant a quoted string.
            if let Expr::Ident(attribute) = &target
                && attribute != "data"
            {
                return Err(format!(
                    "'{attribute}.{name}' at column {}: the attribute {attribute} has no fields (only data does); to compare with text, quote it: '{attribute}.{name}'",
                    token.column.saturating_sub(attribute.len() + 1)
                ));
            }
            return Ok(Expr::Member(Box::new(target), name));
        }
        self.advance();
        let arguments = self.arguments()?;
        method(target, &name, arguments, token.column)
    }

    /// A literal, list, parenthesised expression, attribute or function call.
    fn primary(&mut self) -> Result<Expr, String> {
        let token = self.advance();
        let literal = match token.kind {
            Kind::Number(number) => Literal::Number(number),
            Kind::String(text) => Literal::String(text),
            Kind::True => Literal::Bool(true),
            Kind::False => Literal::Bool(false),
            Kind::Null => Literal::Null,
            Kind::LeftParen => {
                let inner = self.expression()?;
                self.expect(&Kind::RightParen, "')'")?;
                return Ok(inner);
            }
            Kind::LeftBracket => return self.list(token.column),
            Kind::Ident(name) if self.peek().kind == Kind::LeftParen => {
                self.advance();
                let arguments = self.arguments()?;
                return function(&name, arguments, token.column);
            }
            Kind::Ident(name) => return attribute(name, token.column),
            _ => return Err(unexpected(&token, "a value")),
        };
        Ok(Expr::Literal(literal))
    }

    /// The items of a list after its `[`, allowing a trailing comma.
    fn list(&mut self, column: usize) -> Result<Expr, String> {
        let mut items = Vec::new();
        while self.peek().kind != Kind::RightBracket {
            items.push(self.expression()?);
            if self.peek().kind != Kind::Comma {
                break;
            }
            self.advance();
        }
        self.expect(&Kind::RightBracket, "',' or ']'")?;
        checked(Expr::List(items), column)
    }

    /// The arguments of a call after its `(`, through the `)`.
    fn arguments(&mut self) -> Result<Vec<Expr>, String> {
        let mut arguments = Vec::new();
        if self.peek().kind == Kind::RightParen {
            self.advance();
            return Ok(arguments);
        }
        loop {
            arguments.push(self.expression()?);
            if self.peek().kind != Kind::Comma {
                break;
            }
            self.advance();
        }
        self.expect(&Kind::RightParen, "',' or ')'")?;
        Ok(arguments)
    }
}

/// Builds a binary node; `&&` and `||` chains become one flat node.
fn join(operator: Binary, left: Expr, right: Expr, column: usize) -> Result<Expr, String> {
    let node = match (operator, left) {
        (Binary::Or, Expr::Or(mut items)) | (Binary::And, Expr::And(mut items)) => {
            // The items already in the node are within the limit; only the new one can add height.
            if right.height() + 1 > EXPRESSION_DEPTH_MAX {
                return Err(too_deep(column));
            }
            items.push(right);
            return Ok(if matches!(operator, Binary::Or) {
                Expr::Or(items)
            } else {
                Expr::And(items)
            });
        }
        (Binary::Or, left) => Expr::Or(vec![left, right]),
        (Binary::And, left) => Expr::And(vec![left, right]),
        (Binary::In, left) => Expr::In(Box::new(left), Box::new(right)),
        (Binary::Compare(comparison), left) => {
            Expr::Compare(Box::new(left), comparison, Box::new(right))
        }
    };
    checked(node, column)
}

/// A call of a global function: `has(...)` or `size(...)`.
fn function(name: &str, arguments: Vec<Expr>, column: usize) -> Result<Expr, String> {
    if name != "has" && name != "size" {
        return Err(format!(
            "unknown function '{name}' at column {column}; supported: has, size"
        ));
    }
    let argument = single_argument(name, arguments, column)?;
    let node = match (name, argument) {
        ("size", argument) => Expr::Size(Box::new(argument)),
        (_, Expr::Member(target, field)) => Expr::Has(target, field),
        (_, Expr::Ident(attribute)) => Expr::HasAttribute(attribute),
        _ => {
            return Err(format!(
                "has() at column {column} takes a field selection such as data.amount, \
                 or an attribute name"
            ));
        }
    };
    checked(node, column)
}

/// A method call on `target`: a string method or `size()`.
fn method(target: Expr, name: &str, arguments: Vec<Expr>, column: usize) -> Result<Expr, String> {
    let string_method = match name {
        "startsWith" => StringMethod::StartsWith,
        "endsWith" => StringMethod::EndsWith,
        "contains" => StringMethod::Contains,
        "size" if arguments.is_empty() => return Ok(Expr::Size(Box::new(target))),
        "size" => {
            let count = arguments.len();
            return Err(format!(
                "size() at column {column} takes no arguments, found {count}"
            ));
        }
        _ => {
            return Err(format!(
                "unknown method '{name}' at column {column}; \
                 supported: startsWith, endsWith, contains, size"
            ));
        }
    };
    let argument = single_argument(name, arguments, column)?;
    Ok(Expr::Method(
        Box::new(target),
        string_method,
        Box::new(argument),
    ))
}

/// The one argument of a call, or the error saying how many there were.
fn single_argument(name: &str, arguments: Vec<Expr>, column: usize) -> Result<Expr, String> {
    let count = arguments.len();
    match (count, arguments.into_iter().next()) {
        (1, Some(argument)) => Ok(argument),
        _ => Err(format!(
            "{name}() at column {column} takes 1 argument, found {count}"
        )),
    }
}

/// A bare name: `data` or a top-level attribute.
fn attribute(name: String, column: usize) -> Result<Expr, String> {
    if name == "data" || is_attribute_name(&name) {
        return Ok(Expr::Ident(name));
    }
    Err(format!(
        "'{name}' at column {column} is not an attribute name \
         (1 to 128 lower-case letters or digits) or data"
    ))
}

/// The node, if its height is within the limit.
fn checked(node: Expr, column: usize) -> Result<Expr, String> {
    if node.height() > EXPRESSION_DEPTH_MAX {
        return Err(too_deep(column));
    }
    Ok(node)
}

fn too_deep(column: usize) -> String {
    format!("expression nests deeper than {EXPRESSION_DEPTH_MAX} levels at column {column}")
}

fn unexpected(token: &Token, expected: &str) -> String {
    let (kind, column) = (&token.kind, token.column);
    format!("unexpected {kind} at column {column}, expected {expected}")
}
