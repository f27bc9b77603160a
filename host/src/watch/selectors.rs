//! Syntax checks of a watch's `labelSelector` and `fieldSelector` strings, with the grammar and
//! rules of the API server's own parsers (apimachinery's `labels.Parse` and
//! `fields.ParseSelector`), so that a typo is an error at its place in the config instead of a
//! list that the API server refuses with 400 and the watch retries for good.
//!
//! Which field names a field selector may use depends on the resource (a custom resource knows
//! only `metadata.name` and `metadata.namespace`); that is still the API server's to check.

/// Longest label name, and longest label value (IsQualifiedName, IsValidLabelValue).
const MAX_NAME: usize = 63;
/// Longest DNS-1123 subdomain (a label key's prefix).
const MAX_PREFIX: usize = 253;

/// Checks a namespace to watch: a DNS-1123 label (lowercase letters, digits and `-`, at most 63
/// characters, starting and ending with a letter or digit), as the API server requires of a
/// namespace's name. Anything else would watch nothing (`team_a`) or make a request the API
/// server refuses for good (`a/b`), so it is an error where it is given.
///
/// # Errors
/// What is wrong, in words fit for a config error.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.len() <= MAX_NAME && is_label(ns) {
        Ok(())
    } else {
        Err(format!(
            "namespace {ns:?} is not a namespace name: lowercase letters, digits and `-`, at most \
             63 characters, starting and ending with a letter or digit"
        ))
    }
}

/// Checks a label selector string: comma-separated requirements, each `key`, `!key`,
/// `key=value`, `key==value`, `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key>n` or
/// `key<n`. Keys are qualified names (`[prefix/]name`), values label values; an empty string
/// selects everything.
///
/// # Errors
/// What is wrong and where, in words fit for a config error.
pub fn check_label_selector(selector: &str) -> Result<(), String> {
    let tokens = lex(selector)?;
    if tokens.is_empty() {
        return Ok(());
    }
    let mut at = 0;
    loop {
        at = requirement(&tokens, at)?;
        match tokens.get(at) {
            None => return Ok(()),
            Some(Token::Comma) if at + 1 < tokens.len() => at += 1,
            Some(Token::Comma) => return Err("a comma with no requirement after it".into()),
            Some(other) => {
                return Err(format!(
                    "expected a comma between requirements, found {}",
                    other.describe()
                ))
            }
        }
    }
}

/// Checks a field selector string: comma-separated `field=value`, `field==value` or
/// `field!=value` terms; `\,`, `\=` and `\\` escape those characters in a value.
///
/// # Errors
/// What is wrong and where, in words fit for a config error.
pub fn check_field_selector(selector: &str) -> Result<(), String> {
    for term in split_unescaped(selector, ',') {
        if term.is_empty() {
            continue;
        }
        let Some((field, value)) = split_op(term) else {
            return Err(format!(
                "term {term:?} has no operator: use field=value, field==value or field!=value"
            ));
        };
        if field.trim().is_empty() {
            return Err(format!("term {term:?} has no field name"));
        }
        check_escapes(value).map_err(|e| format!("term {term:?}: {e}"))?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("{w:?}"),
            Token::Not => "`!`".into(),
            Token::Eq => "`=`".into(),
            Token::DoubleEq => "`==`".into(),
            Token::NotEq => "`!=`".into(),
            Token::Gt => "`>`".into(),
            Token::Lt => "`<`".into(),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Comma => "`,`".into(),
        }
    }
}

fn lex(input: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            // apimachinery's lexer skips these four only (not U+00A0 and other spaces).
            ' ' | '\t' | '\r' | '\n' => continue,
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::NotEq
            }
            '!' => Token::Not,
            '=' if chars.peek() == Some(&'=') => {
                chars.next();
                Token::DoubleEq
            }
            '=' => Token::Eq,
            '>' => Token::Gt,
            '<' => Token::Lt,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            c => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if " \t\r\n!=<>(),".contains(next) {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                Token::Word(word)
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// Parses one requirement starting at `at`; returns the index after it.
fn requirement(tokens: &[Token], mut at: usize) -> Result<usize, String> {
    let negated = tokens.get(at) == Some(&Token::Not);
    if negated {
        at += 1;
    }
    let key = match tokens.get(at) {
        Some(Token::Word(w)) => w,
        Some(other) => return Err(format!("expected a label key, found {}", other.describe())),
        None => return Err("expected a label key at the end".into()),
    };
    check_key(key)?;
    at += 1;
    let op = tokens.get(at);
    if negated || matches!(op, None | Some(Token::Comma)) {
        // `key` or `!key`: an existence test.
        if negated && !matches!(op, None | Some(Token::Comma)) {
            return Err(format!("`!{key}` takes no operator or value"));
        }
        return Ok(at);
    }
    match op {
        Some(Token::Eq | Token::DoubleEq | Token::NotEq) => {
            at += 1;
            match tokens.get(at) {
                Some(Token::Word(value)) => {
                    check_value(key, value)?;
                    Ok(at + 1)
                }
                // `key=` selects an empty value.
                None | Some(Token::Comma) => Ok(at),
                Some(other) => Err(format!(
                    "expected a value for {key:?}, found {}",
                    other.describe()
                )),
            }
        }
        Some(Token::Gt | Token::Lt) => {
            at += 1;
            match tokens.get(at) {
                Some(Token::Word(n)) if n.parse::<i64>().is_ok() => {
                    check_value(key, n)?;
                    Ok(at + 1)
                }
                Some(other) => Err(format!(
                    "`>` and `<` compare {key:?} with an integer, found {}",
                    other.describe()
                )),
                None => Err(format!("expected an integer after {key:?}'s `>` or `<`")),
            }
        }
        Some(Token::Word(w)) if w == "in" || w == "notin" => set(tokens, at + 1, key, w),
        Some(other) => Err(format!(
            "expected an operator after {key:?} (=, ==, !=, in, notin, >, <), found {}",
            other.describe()
        )),
        None => Ok(at),
    }
}

/// `(v1, v2, ...)` after `in`/`notin`; returns the index after `)`.
fn set(tokens: &[Token], mut at: usize, key: &str, op: &str) -> Result<usize, String> {
    if tokens.get(at) != Some(&Token::Open) {
        return Err(format!(
            "`{key} {op}` needs a parenthesized list of values: {key} {op} (a,b)"
        ));
    }
    at += 1;
    let mut values = 0;
    loop {
        match tokens.get(at) {
            Some(Token::Word(value)) => {
                check_value(key, value)?;
                values += 1;
                at += 1;
            }
            // An empty value in the list (`(a,,b)`, `(,a)`): allowed, as the API server does.
            Some(Token::Comma | Token::Close) => values += 1,
            Some(other) => {
                return Err(format!(
                    "expected a value in {key:?}'s list, found {}",
                    other.describe()
                ))
            }
            None => return Err(format!("{key:?}'s list of values has no closing `)`")),
        }
        match tokens.get(at) {
            Some(Token::Comma) => at += 1,
            Some(Token::Close) => break,
            Some(other) => {
                return Err(format!(
                    "expected `,` or `)` in {key:?}'s list, found {}",
                    other.describe()
                ))
            }
            None => return Err(format!("{key:?}'s list of values has no closing `)`")),
        }
    }
    // `()` is one empty value to the API server, like `(,)`.
    debug_assert!(values > 0);
    Ok(at + 1)
}

/// A label name: at most 63 characters, alphanumerics with `-`, `_`, `.` inside.
fn is_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
}

/// A DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters, each
/// dot-separated part starting and ending alphanumeric.
fn is_subdomain(s: &str) -> bool {
    s.len() <= MAX_PREFIX && s.split('.').all(is_label)
}

/// A DNS-1123 label's characters: lowercase alphanumerics and `-`, starting and ending
/// alphanumeric (its length is the caller's to bound).
fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_subdomain(prefix) {
            return Err(format!(
                "label key {key:?}: the prefix {prefix:?} must be a DNS subdomain \
                 (lowercase letters, digits, `-`, `.`; at most {MAX_PREFIX} characters)"
            ));
        }
    }
    if !is_name(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-{MAX_NAME} letters, digits, `-`, `_` or `.`, \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), String> {
    if is_name(value) {
        return Ok(());
    }
    Err(format!(
        "value {value:?} of label {key:?}: a label value is at most {MAX_NAME} letters, digits, \
         `-`, `_` or `.`, starting and ending with a letter or digit"
    ))
}

/// Splits `s` at each `sep` not escaped by a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `term` split at its first unescaped operator (`!=`, `==` or `=`, tried in that order at
/// each position, as apimachinery's `splitTerm` does).
fn split_op(term: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in term.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if let Some(op) = ["!=", "==", "="]
            .iter()
            .find(|op| term[i..].starts_with(**op))
        {
            return Some((&term[..i], &term[i + op.len()..]));
        }
    }
    None
}

/// A value's escapes: `\` only before `\`, `,` or `=`, and no bare `=` (a bare `,` already
/// split the terms).
fn check_escapes(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\' | ',' | '=') => {}
                Some(other) => {
                    return Err(format!(
                        "`\\{other}` is not an escape (only `\\\\`, `\\,` and `\\=` are)"
                    ))
                }
                None => return Err("a value may not end with a lone `\\`".into()),
            },
            '=' => return Err("a `=` in a value must be escaped as `\\=`".into()),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespaces_are_dns_labels() {
        for ok in [
            "default",
            "team-a",
            "a",
            "kube-system",
            "x1",
            &"a".repeat(63),
        ] {
            assert_eq!(super::check_namespace(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Team-A",
            "team_a",
            "a/b",
            " team-a",
            "-a",
            "a-",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(super::check_namespace(bad).is_err(), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn label_selectors_the_api_server_accepts_pass() {
        for ok in [
            "",
            "  ",
            "app",
            "!app",
            "app=web",
            "app==web",
            "app!=web",
            "app=",
            "app=web,tier!=db",
            " app = web , tier in (a, b) ",
            "env notin (prod)",
            "kubelisten.dev/watch=true",
            "example.com/a_b.c-d=x.y_z-1",
            "replicas>2",
            "x in ()",
            "x in (a,,b)",
            "!a,b",
        ] {
            assert_eq!(check_label_selector(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn label_selector_typos_are_errors_that_say_what() {
        for (bad, says) in [
            ("app=web,", "comma with no requirement"),
            (",app", "expected a label key, found `,`"),
            ("app=web tier=db", "expected a comma"),
            ("app in a,b", "parenthesized list"),
            ("app in (a", "no closing `)`"),
            ("replicas<-1", "value \"-1\""),
            ("app > two", "integer"),
            ("app=we b", "expected a comma"),
            ("app=-web", "value \"-web\""),
            ("Example.com/app=x", "prefix \"Example.com\""),
            ("/app=x", "prefix \"\""),
            ("-app", "label key \"-app\""),
            ("!app=x", "takes no operator"),
            ("app=(x)", "expected a value for \"app\", found `(`"),
            ("app ~= x", "expected an operator"),
            // A non-breaking space is part of the word, as for the API server.
            ("app=\u{a0}web", "of label \"app\""),
            (&format!("a={}", "v".repeat(64)), "at most 63"),
        ] {
            let err = check_label_selector(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn field_selectors_the_api_server_accepts_pass() {
        for ok in [
            "",
            "metadata.name=x",
            "metadata.name==x",
            "metadata.name!=x,metadata.namespace=default",
            "spec.nodeName=",
            "metadata.name=a\\,b\\=c\\\\d",
            "a=b,",
        ] {
            assert_eq!(check_field_selector(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn field_selector_typos_are_errors_that_say_what() {
        for (bad, says) in [
            ("metadata.name", "no operator"),
            ("=x", "no field name"),
            ("metadata.name=a=b", "must be escaped"),
            // The first operator wins, as for the API server: `a` = `b!=c`.
            ("a=b!=c", "must be escaped"),
            (" ", "no operator"),
            ("metadata.name=a\\b", "not an escape"),
            ("metadata.name=a\\", "lone"),
        ] {
            let err = check_field_selector(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
