//! Python's `Manager().Namespace()`, the CSP way: a state-server process owns the attributes;
//! each client holds a `Namespace` handle (a request and a reply channel) with `get` and
//! `set`. The Python counterpart is `examples/python/mp_namespace.py`; both print the same
//! lines (checked by `tests/examples_output.rs`).
//!
//! Run: `cargo run --release --example mp_namespace`

use pycsp::prelude::*;
use serde::{Deserialize, Serialize};

// ANCHOR: server
/// A value an attribute may hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Value {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for Value {
    /// Python's `repr`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "'{s}'"),
        }
    }
}

/// What a client may ask the namespace server.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Get(String),
    Set(String, Value),
    Repr,
}

/// What the server answers to `Get` and `Repr` (a `Set` has no answer).
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Value(Option<Value>),
    Repr(String),
}

/// The server: the only process that touches the attributes. It serves one request at a
/// time from whichever client asks (`fair_select`), and ends when every client has gone.
#[process]
fn namespace_server(
    requests: Vec<ChannelIn<Request>>,
    replies: Vec<ChannelOut<Reply>>,
) -> Result<(), ChannelError> {
    let mut attrs: Vec<(String, Value)> = Vec::new(); // sorted by name, like Python's repr
    loop {
        let mut alt = Alternation::new();
        for r in &requests {
            alt = alt.input(r, |req| req);
        }
        let Chosen { index, value } = match alt.fair_select() {
            Ok(chosen) => chosen,
            Err(ChannelError::Retired) => return Ok(()), // every client retired
            Err(e) => return Err(e),
        };
        match value {
            Request::Get(name) => {
                let v = attrs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone());
                replies[index].write(Reply::Value(v))?;
            }
            Request::Set(name, v) => match attrs.binary_search_by(|(n, _)| n.cmp(&name)) {
                Ok(i) => attrs[i].1 = v,
                Err(i) => attrs.insert(i, (name, v)),
            },
            Request::Repr => {
                let fields: Vec<String> = attrs.iter().map(|(n, v)| format!("{n}={v}")).collect();
                replies[index].write(Reply::Repr(format!("Namespace({})", fields.join(", "))))?;
            }
        }
    }
}
// ANCHOR_END: server

// ANCHOR: client
/// A client's handle on the namespace: what `manager.Namespace()` returns in Python.
#[derive(Serialize, Deserialize)]
struct Namespace {
    requests: ChannelOut<Request>,
    replies: ChannelIn<Reply>,
}

impl Namespace {
    fn get(&self, name: &str) -> Result<Option<Value>, ChannelError> {
        self.requests.write(Request::Get(name.into()))?;
        match self.replies.read()? {
            Reply::Value(v) => Ok(v),
            Reply::Repr(_) => unreachable!("the server answers a Get with a Value"),
        }
    }

    fn set(&self, name: &str, value: Value) -> Result<(), ChannelError> {
        self.requests.write(Request::Set(name.into(), value))
    }

    fn repr(&self) -> Result<String, ChannelError> {
        self.requests.write(Request::Repr)?;
        match self.replies.read()? {
            Reply::Repr(s) => Ok(s),
            Reply::Value(_) => unreachable!("the server answers a Repr with a Repr"),
        }
    }
}

/// The running server process: join it to wait for its end.
type Server = pycsp::Spawned<Process<Result<(), ChannelError>>>;

/// Starts a namespace server with one handle per client.
fn namespace(clients: usize) -> Result<(Server, Vec<Namespace>), pycsp::Error> {
    let mut requests = Vec::new();
    let mut handles = Vec::new();
    let mut replies = Vec::new();
    for _ in 0..clients {
        let req = Channel::new()?;
        let rep = Channel::new()?;
        requests.push(req.reader());
        replies.push(rep.writer());
        handles.push(Namespace {
            requests: req.writer(),
            replies: rep.reader(),
        });
    }
    Ok((Spawn(namespace_server(requests, replies))?, handles))
}
// ANCHOR_END: client

// ANCHOR: main
/// `def f(ns)`. Python's `ns.x += 1` is a get and a set: two requests, with room for
/// another client in between (see `mp_lock` for the pattern that makes an update whole).
#[process]
fn f(ns: Namespace) -> Result<(), ChannelError> {
    let Some(Value::Int(x)) = ns.get("x")? else {
        panic!("x is not an int")
    };
    ns.set("x", Value::Int(x + 1))?;
    ns.set("y", Value::Str("changed".into()))
}

fn main() -> Result<(), pycsp::Error> {
    let (server, mut clients) = namespace(2)?;
    let (ns, child_ns) = (clients.remove(0), clients.remove(0));
    ns.set("x", Value::Int(1))?;
    ns.set("y", Value::Str("one".into()))?;
    Parallel(f(child_ns))??; // p.start(); p.join()
    println!("{}", ns.repr()?);
    let (x, y) = (ns.get("x")?, ns.get("y")?);
    match (x, y) {
        (Some(Value::Int(x)), Some(Value::Str(y))) => println!("{x} {y}"),
        other => panic!("unexpected attributes {other:?}"),
    }
    drop(ns); // the server ends when its last client is gone
    server.join()??;
    Ok(())
}
// ANCHOR_END: main
