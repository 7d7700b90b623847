//! The expression dialect's syntax tree and the compiled [`Expression`] that holds it.

use std::fmt;

use super::{eval, parser};

/// A compiled expression of the `cel` dialect (the CEL subset in the [module docs](super)).
///
/// It keeps its source text, which is what it serialises back to and what equality compares.
#[derive(Clone)]
pub struct Expression {
    source: String,
    root: Expr,
    reads_data: bool,
}

impl Expression {
    /// Compiles the text; the error is the message (with a column) to put after a path.
    pub(super) fn compile(source: &str) -> Result<Expression, String> {
        let root = parser::parse(source)?;
        let reads_data = root.reads_data();
        Ok(Expression {
            source: source.to_owned(),
            root,
            reads_data,
        })
    }

    /// The text the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression refers to `data` (so evaluating it needs the payload).
    pub fn reads_data(&self) -> bool {
        self.reads_data
    }

    /// Whether the event matches: the expression evaluates to `true` without an error.
    pub fn matches(&self, event: &serde_json::Value) -> bool {
        eval::is_true(&self.root, event)
    }
}

impl PartialEq for Expression {
    /// Two expressions are equal when their source texts are: the tree follows from the text.
    fn eq(&self, other: &Expression) -> bool {
        self.source == other.source
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

/// A literal value written in the expression.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Literal {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// Any number; integers are held exactly up to 2^53.
    Number(f64),
    /// A string with escapes resolved.
    String(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparison {
    /// `==`.
    Equal,
    /// `!=`.
    NotEqual,
    /// `<`.
    Less,
    /// `<=`.
    LessEqual,
    /// `>`.
    Greater,
    /// `>=`.
    GreaterEqual,
}

/// A string method: receiver and argument are both strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StringMethod {
    /// `x.startsWith(s)`.
    StartsWith,
    /// `x.endsWith(s)`.
    EndsWith,
    /// `x.contains(s)`.
    Contains,
}

/// A node of the syntax tree. Its height is at most [`super::EXPRESSION_DEPTH_MAX`] (checked as
/// it is built), so evaluating and dropping it recurse a bounded number of times.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    /// A literal.
    Literal(Literal),
    /// `[a, b, ...]`.
    List(Vec<Expr>),
    /// A top-level attribute, or `data` for the payload.
    Ident(String),
    /// `target.field`.
    Member(Box<Expr>, String),
    /// `target[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `has(target.field)`: whether the map `target` has the key.
    Has(Box<Expr>, String),
    /// `has(attribute)`: whether the event sets the attribute (or has a payload, for `data`).
    HasAttribute(String),
    /// `size(x)` or `x.size()`.
    Size(Box<Expr>),
    /// `receiver.method(argument)`.
    Method(Box<Expr>, StringMethod, Box<Expr>),
    /// `!x`.
    Not(Box<Expr>),
    /// `-x`.
    Negate(Box<Expr>),
    /// `left op right`.
    Compare(Box<Expr>, Comparison, Box<Expr>),
    /// `element in collection`.
    In(Box<Expr>, Box<Expr>),
    /// `a && b && ...`, flattened so long chains stay shallow.
    And(Vec<Expr>),
    /// `a || b || ...`, flattened so long chains stay shallow.
    Or(Vec<Expr>),
}

impl Expr {
    /// The direct children, in evaluation order.
    fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Literal(_) | Expr::Ident(_) | Expr::HasAttribute(_) => Vec::new(),
            Expr::List(items) | Expr::And(items) | Expr::Or(items) => items.iter().collect(),
            Expr::Member(target, _)
            | Expr::Has(target, _)
            | Expr::Size(target)
            | Expr::Not(target)
            | Expr::Negate(target) => vec![target],
            Expr::Index(left, right)
            | Expr::Method(left, _, right)
            | Expr::Compare(left, _, right)
            | Expr::In(left, right) => vec![left, right],
        }
    }

    /// Levels in the tree below and including this node (a leaf is 1).
    pub(super) fn height(&self) -> usize {
        1 + self
            .children()
            .into_iter()
            .map(Expr::height)
            .max()
            .unwrap_or(0)
    }

    /// Whether `data` occurs anywhere in the tree.
    fn reads_data(&self) -> bool {
        match self {
            Expr::Ident(name) | Expr::HasAttribute(name) => name == "data",
            _ => self.children().into_iter().any(Expr::reads_data),
        }
    }
}
