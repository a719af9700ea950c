//! Python's `Manager().dict()` and `.list()`, the CSP way: a state-server process owns the
//! data; clients send requests and read replies. No lock: only the server touches the data.
//!
//! The Python counterpart is `examples/python/mp_manager.py`; both print the same lines (checked by
//! `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_manager`

use pycsp::prelude::*;
use serde::{Deserialize, Serialize};

// ANCHOR: manager
/// Python values the example stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    Int(i64),
    Float(f64),
    Str(String),
    None,
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "'{s}'"),
            Value::None => write!(f, "None"),
        }
    }
}

/// What a client may ask the manager.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    DictSet(Value, Value),
    ListReverse,
    Show,
}

/// The manager process: owns a dict (insertion-ordered, like Python's) and a list.
#[process]
fn manager(
    requests: ChannelIn<Request>,
    replies: ChannelOut<String>,
    list: Vec<i64>,
) -> Result<(), ChannelError> {
    let mut dict: Vec<(Value, Value)> = Vec::new();
    let mut list = list;
    for req in requests.iter() {
        match req? {
            Request::DictSet(k, v) => match dict.iter_mut().find(|(key, _)| *key == k) {
                Some(entry) => entry.1 = v,
                None => dict.push((k, v)),
            },
            Request::ListReverse => list.reverse(),
            Request::Show => {
                let d: Vec<String> = dict.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                replies.write(format!("{{{}}}\n{list:?}", d.join(", ")))?;
            }
        }
    }
    Ok(())
}

#[process]
fn f(d: ChannelOut<Request>) -> Result<(), ChannelError> {
    d.write(Request::DictSet(Value::Int(1), Value::Str("1".into())))?;
    d.write(Request::DictSet(Value::Str("2".into()), Value::Int(2)))?;
    d.write(Request::DictSet(Value::Float(0.25), Value::None))?;
    d.write(Request::ListReverse)
}
// ANCHOR_END: manager

fn main() -> Result<(), pycsp::Error> {
    let requests = Channel::<Request>::new()?;
    let replies = Channel::<String>::new()?;
    let server = Spawn(manager(
        requests.reader(),
        replies.writer(),
        (0..10).collect(),
    ))?;
    let (ask, answer) = (requests.writer(), replies.reader());
    Parallel(f(requests.writer()))??; // p.start(); p.join()
    ask.write(Request::Show)?;
    println!("{}", answer.read()?);
    drop(ask); // the manager retires when its last client does
    server.join()??;
    Ok(())
}
