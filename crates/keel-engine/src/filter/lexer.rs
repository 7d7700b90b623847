//! Tokens of the expression dialect, each with the column it starts at.
//!
//! Columns count characters (not bytes) from 1, so they match what an editor shows for a
//! one-line expression. The text is at most [`super::EXPRESSION_BYTES_MAX`] bytes, so the
//! token list is bounded by it too.

use std::fmt;

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    /// An integer or float literal, held as a double.
    Number(f64),
    /// A string literal with its escapes resolved.
    String(String),
    /// A name: an attribute, `data`, a field, a function or a method.
    Ident(String),
    /// `true`.
    True,
    /// `false`.
    False,
    /// `null`.
    Null,
    /// `in`.
    In,
    /// `(`.
    LeftParen,
    /// `)`.
    RightParen,
    /// `[`.
    LeftBracket,
    /// `]`.
    RightBracket,
    /// `.`.
    Dot,
    /// `,`.
    Comma,
    /// `!`.
    Bang,
    /// `-`.
    Minus,
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
    /// `&&`.
    And,
    /// `||`.
    Or,
    /// The end of the text.
    End,
}

impl fmt::Display for Kind {
    /// How an error message names the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let symbol = match self {
            Kind::Number(number) => return write!(f, "number {number}"),
            Kind::String(text) => return write!(f, "string {text:?}"),
            Kind::Ident(name) => return write!(f, "name '{name}'"),
            Kind::End => return f.write_str("end of expression"),
            Kind::True => "true",
            Kind::False => "false",
            Kind::Null => "null",
            Kind::In => "in",
            Kind::LeftParen => "(",
            Kind::RightParen => ")",
            Kind::LeftBracket => "[",
            Kind::RightBracket => "]",
            Kind::Dot => ".",
            Kind::Comma => ",",
            Kind::Bang => "!",
            Kind::Minus => "-",
            Kind::Equal => "==",
            Kind::NotEqual => "!=",
            Kind::Less => "<",
            Kind::LessEqual => "<=",
            Kind::Greater => ">",
            Kind::GreaterEqual => ">=",
            Kind::And => "&&",
            Kind::Or => "||",
        };
        write!(f, "token '{symbol}'")
    }
}

/// One token and the column (from 1) of its first character.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    /// What it is.
    pub(super) kind: Kind,
    /// Where it starts.
    pub(super) column: usize,
}

/// Splits the text into tokens, ending with [`Kind::End`]; the error is the message to show.
pub(super) fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        position: 0,
    };
    let mut tokens = Vec::new();
    loop {
        lexer.skip_whitespace();
        let column = lexer.position + 1;
        let kind = lexer.next_kind()?;
        let end = kind == Kind::End;
        tokens.push(Token { kind, column });
        if end {
            return Ok(tokens);
        }
    }
}

/// A cursor over the characters of the text.
struct Lexer {
    chars: Vec<char>,
    position: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn peek_second(&self) -> Option<char> {
        self.chars.get(self.position + 1).copied()
    }

    fn column(&self) -> usize {
        self.position + 1
    }

    fn skip_whitespace(&mut self) {
        while self
            .peek()
            .is_some_and(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
        {
            self.position += 1;
        }
    }

    /// Reads the token at the cursor (whitespace already skipped).
    fn next_kind(&mut self) -> Result<Kind, String> {
        let Some(first) = self.peek() else {
            return Ok(Kind::End);
        };
        if first.is_ascii_digit() {
            return self.number();
        }
        if first == '\'' || first == '"' {
            return self.string(first);
        }
        if first.is_ascii_alphabetic() || first == '_' {
            return Ok(self.word());
        }
        self.symbol(first)
    }

    /// Punctuation and operators, one or two characters.
    fn symbol(&mut self, first: char) -> Result<Kind, String> {
        let second = self.peek_second();
        let (kind, length) = match (first, second) {
            ('=', Some('=')) => (Kind::Equal, 2),
            ('!', Some('=')) => (Kind::NotEqual, 2),
            ('<', Some('=')) => (Kind::LessEqual, 2),
            ('>', Some('=')) => (Kind::GreaterEqual, 2),
            ('&', Some('&')) => (Kind::And, 2),
            ('|', Some('|')) => (Kind::Or, 2),
            ('!', _) => (Kind::Bang, 1),
            ('<', _) => (Kind::Less, 1),
            ('>', _) => (Kind::Greater, 1),
            ('-', _) => (Kind::Minus, 1),
            ('(', _) => (Kind::LeftParen, 1),
            (')', _) => (Kind::RightParen, 1),
            ('[', _) => (Kind::LeftBracket, 1),
            (']', _) => (Kind::RightBracket, 1),
            ('.', _) => (Kind::Dot, 1),
            (',', _) => (Kind::Comma, 1),
            _ => return Err(self.unexpected_character(first)),
        };
        self.position += length;
        Ok(kind)
    }

    fn unexpected_character(&self, found: char) -> String {
        let column = self.column();
        let hint = match found {
            '=' => " (use '==' to compare)",
            '&' => " (use '&&')",
            '|' => " (use '||')",
            _ => "",
        };
        format!("unexpected character {found:?} at column {column}{hint}")
    }

    /// An identifier or keyword: `[A-Za-z_][A-Za-z0-9_]*`.
    fn word(&mut self) -> Kind {
        let start = self.position;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.position += 1;
        }
        let word: String = self.chars[start..self.position].iter().collect();
        match word.as_str() {
            "true" => Kind::True,
            "false" => Kind::False,
            "null" => Kind::Null,
            "in" => Kind::In,
            _ => Kind::Ident(word),
        }
    }

    /// `digits [. digits] [(e|E) [+|-] digits]`, read as a double.
    fn number(&mut self) -> Result<Kind, String> {
        let start = self.position;
        self.digits();
        if self.peek() == Some('.') && self.peek_second().is_some_and(|c| c.is_ascii_digit()) {
            self.position += 1;
            self.digits();
        }
        if self.peek().is_some_and(|c| c == 'e' || c == 'E') {
            self.position += 1;
            if self.peek().is_some_and(|c| c == '+' || c == '-') {
                self.position += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                let column = self.column();
                return Err(format!("exponent without digits at column {column}"));
            }
            self.digits();
        }
        let text: String = self.chars[start..self.position].iter().collect();
        text.parse::<f64>()
            .map(Kind::Number)
            .map_err(|_| format!("invalid number '{text}' at column {}", start + 1))
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.position += 1;
        }
    }

    /// A string in `quote`s, on one line, with CEL's escapes.
    fn string(&mut self, quote: char) -> Result<Kind, String> {
        let start_column = self.column();
        self.position += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(format!(
                        "unterminated string starting at column {start_column}"
                    ));
                }
                Some('\n' | '\r') => {
                    let column = self.column();
                    return Err(format!("line break in string at column {column}"));
                }
                Some(c) if c == quote => {
                    self.position += 1;
                    return Ok(Kind::String(text));
                }
                Some('\\') => text.push(self.escape()?),
                Some(c) => {
                    self.position += 1;
                    text.push(c);
                }
            }
        }
    }

    /// The character an escape sequence at the cursor stands for.
    fn escape(&mut self) -> Result<char, String> {
        let column = self.column();
        self.position += 1;
        let Some(code) = self.peek() else {
            return Err(format!("unterminated escape at column {column}"));
        };
        self.position += 1;
        let simple = match code {
            '\\' => '\\',
            '\'' => '\'',
            '"' => '"',
            '`' => '`',
            '?' => '?',
            'a' => '\u{07}',
            'b' => '\u{08}',
            'f' => '\u{0C}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{0B}',
            'x' | 'X' => return self.hex_escape(2, column),
            'u' => return self.hex_escape(4, column),
            'U' => return self.hex_escape(8, column),
            '0'..='3' => return self.octal_escape(code, column),
            _ => return Err(format!("unknown escape '\\{code}' at column {column}")),
        };
        Ok(simple)
    }

    /// `\xHH`, `\uHHHH` or `\UHHHHHHHH`, the code point after the letter.
    fn hex_escape(&mut self, digit_count: usize, column: usize) -> Result<char, String> {
        let mut value: u32 = 0;
        for _ in 0..digit_count {
            let digit = self.peek().and_then(|c| c.to_digit(16));
            let Some(digit) = digit else {
                return Err(format!(
                    "escape at column {column} needs {digit_count} hex digits"
                ));
            };
            self.position += 1;
            value = value.saturating_mul(16).saturating_add(digit);
        }
        char::from_u32(value)
            .ok_or_else(|| format!("escape at column {column} is not a Unicode scalar value"))
    }

    /// `\ooo`: three octal digits, the first already read.
    fn octal_escape(&mut self, first: char, column: usize) -> Result<char, String> {
        let mut value = first.to_digit(8).unwrap_or_default();
        for _ in 0..2 {
            let Some(digit) = self.peek().and_then(|c| c.to_digit(8)) else {
                return Err(format!("octal escape at column {column} needs 3 digits"));
            };
            self.position += 1;
            value = value * 8 + digit;
        }
        // Three octal digits starting 0..=3 are at most 0o377 = 255, always a valid char.
        char::from_u32(value).ok_or_else(|| format!("invalid octal escape at column {column}"))
    }
}
