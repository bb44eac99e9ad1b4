//! The command-line syntax of `corum ctl txn`.
//!
//! ```text
//! corum ctl txn --if 'value(k) = v' --if 'version(k) > 2' \
//!               --then 'put k v2' --then 'del other' --else 'get k'
//! ```
//!
//! # Conditions (`--if`, all must hold)
//! `TARGET(KEY) OP OPERAND`, where
//! - `TARGET` is `value`, `version`, `create` (create revision), `mod` (mod revision) or
//!   `exists`;
//! - `OP` is `=` (or `==`), `!=`, `<`, `>`;
//! - `OPERAND` is bytes for `value`, a number for `version` / `create` / `mod`, `true` or
//!   `false` for `exists`.
//!
//! `exists(KEY)` alone means `exists(KEY) = true`, `absent(KEY)` means `exists(KEY) = false`.
//! A missing key has version, create and mod revision 0; a `value` condition on a missing key
//! is false whatever the operator (as in etcd).
//!
//! # Operations (`--then` when the conditions hold, `--else` otherwise)
//! `put KEY VALUE`, `del KEY`, `get KEY`.
//!
//! # Keys, values and quoting
//! Words are separated by spaces. A word may be quoted with `"..."` or `'...'` to hold spaces
//! or parentheses; inside double quotes `\"` and `\\` escape. A word `0x...` (even number of
//! hex digits) is taken as those bytes; anything else as its UTF-8 bytes.
//!
//! Every key of one transaction must be in one partition (use a `{hash tag}` in the keys);
//! otherwise the client refuses it.

use bytes::Bytes;
use thiserror::Error;
use wire::messages::{Compare, CompareOp, CompareTarget, Put, TxnOp};

use super::parse_bytes;

/// A condition or operation that does not follow the syntax.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{text:?}: {reason}")]
pub struct SyntaxError {
    /// The offending argument.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

fn err(text: &str, reason: impl Into<String>) -> SyntaxError {
    SyntaxError {
        text: text.to_owned(),
        reason: reason.into(),
    }
}

/// The byte offset of the first `)` outside quotes.
fn closing_paren(text: &str) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == ')' => return Some(i),
            None => {}
        }
    }
    None
}

/// Splits `text` into words, honouring quotes (see the module docs).
fn words(text: &str) -> Result<Vec<String>, SyntaxError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '\'' {
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(err(text, "unterminated ' quote")),
                    }
                }
            } else if c == '"' {
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err(err(text, "unterminated \" quote")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(err(text, "unterminated \" quote")),
                    }
                }
            } else {
                word.push(c);
            }
        }
        out.push(word);
    }
    Ok(out)
}

fn key(word: &str) -> Bytes {
    Bytes::from(parse_bytes(word))
}

/// Parses one `--if` condition.
pub fn parse_compare(text: &str) -> Result<Compare, SyntaxError> {
    let shape = || err(text, "expected TARGET(KEY) OP OPERAND");
    let (target, rest) = text.trim_start().split_once('(').ok_or_else(shape)?;
    let target = target.trim();
    // The key: one word (possibly quoted) up to the closing parenthesis.
    let close = closing_paren(rest).ok_or_else(shape)?;
    let key_words = words(&rest[..close])?;
    let [k] = key_words.as_slice() else {
        return Err(err(text, "expected one key inside the parentheses"));
    };
    let k = key(k);
    let rest = rest[close + 1..].trim();
    if rest.is_empty() {
        return match target {
            "exists" => Ok(Compare {
                key: k,
                op: CompareOp::Equal,
                target: CompareTarget::Exists(true),
            }),
            "absent" => Ok(Compare {
                key: k,
                op: CompareOp::Equal,
                target: CompareTarget::Exists(false),
            }),
            _ => Err(err(text, "missing operator and operand")),
        };
    }
    let (op, operand) = ["==", "!=", "=", "<", ">"]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|o| (*op, o)))
        .ok_or_else(|| err(text, "expected an operator: = != < >"))?;
    let operand_words = words(operand)?;
    let [operand] = operand_words.as_slice() else {
        return Err(err(
            text,
            "expected exactly one operand (quote it if it has spaces)",
        ));
    };
    let operand = operand.as_str();
    let op = match op {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        _ => CompareOp::Greater,
    };
    let number = |what: &str| {
        operand
            .parse::<u64>()
            .map_err(|_| err(text, format!("{what} needs a number, not {operand:?}")))
    };
    let target = match target {
        "value" => CompareTarget::Value(key(operand)),
        "version" => CompareTarget::Version(number("version")?),
        "create" => CompareTarget::CreateRevision(number("create")?),
        "mod" => CompareTarget::ModRevision(number("mod")?),
        "exists" => match operand {
            "true" => CompareTarget::Exists(true),
            "false" => CompareTarget::Exists(false),
            _ => return Err(err(text, "exists needs true or false")),
        },
        other => {
            return Err(err(
                text,
                format!("unknown target {other:?} (value, version, create, mod, exists)"),
            ))
        }
    };
    Ok(Compare { key: k, op, target })
}

/// Parses one `--then` / `--else` operation.
pub fn parse_op(text: &str) -> Result<TxnOp, SyntaxError> {
    let w = words(text)?;
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["put", k, v] => Ok(TxnOp::Put(Put {
            key: key(k),
            value: key(v),
            if_absent: false,
            return_previous: false,
        })),
        ["del" | "delete", k] => Ok(TxnOp::Delete {
            key: key(k),
            return_previous: false,
        }),
        ["get", k] => Ok(TxnOp::Get { key: key(k) }),
        _ => Err(err(
            text,
            "expected 'put KEY VALUE', 'del KEY' or 'get KEY'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let c = parse_compare("value(k) = v").unwrap();
        assert_eq!(c.key, "k");
        assert_eq!(c.op, CompareOp::Equal);
        assert_eq!(c.target, CompareTarget::Value(Bytes::from("v")));
        let c = parse_compare("version({u}a)>3").unwrap();
        assert_eq!(c.key, "{u}a");
        assert_eq!(c.op, CompareOp::Greater);
        assert_eq!(c.target, CompareTarget::Version(3));
        let c = parse_compare("value(\"a b\") != 'x (y)'").unwrap();
        assert_eq!(c.key, "a b");
        assert_eq!(c.op, CompareOp::NotEqual);
        assert_eq!(c.target, CompareTarget::Value(Bytes::from("x (y)")));
        let c = parse_compare("mod(k) < 10").unwrap();
        assert_eq!(c.target, CompareTarget::ModRevision(10));
        let c = parse_compare("create(0x00ff) == 0").unwrap();
        assert_eq!(c.key, Bytes::from_static(b"\x00\xff"));
        assert_eq!(c.target, CompareTarget::CreateRevision(0));
        assert_eq!(
            parse_compare("absent(k)").unwrap().target,
            CompareTarget::Exists(false)
        );
        assert_eq!(
            parse_compare("exists(k) = false").unwrap().target,
            CompareTarget::Exists(false)
        );
        assert_eq!(
            parse_compare("value(k) = \"\"").unwrap().target,
            CompareTarget::Value(Bytes::new())
        );
    }

    #[test]
    fn bad_conditions() {
        for bad in [
            "",
            "value k = v",
            "value(k) v",
            "value(k) ~ v",
            "version(k) = x",
            "exists(k) = maybe",
            "size(k) = 1",
            "value(k) = 'open",
            "value(k)",
            "value(k) = a b",
        ] {
            assert!(parse_compare(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn operations() {
        assert_eq!(
            parse_op("put k 'hello world'").unwrap(),
            TxnOp::Put(Put {
                key: Bytes::from("k"),
                value: Bytes::from("hello world"),
                if_absent: false,
                return_previous: false,
            })
        );
        assert_eq!(
            parse_op("del k").unwrap(),
            TxnOp::Delete {
                key: Bytes::from("k"),
                return_previous: false
            }
        );
        assert_eq!(
            parse_op(" get  k ").unwrap(),
            TxnOp::Get {
                key: Bytes::from("k")
            }
        );
        for bad in ["", "put k", "get", "del a b", "frob k"] {
            assert!(parse_op(bad).is_err(), "{bad:?} accepted");
        }
    }
}
