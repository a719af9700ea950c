//! `tracing` events of a network's life, seen by a real subscriber: in the root (processes
//! started, returned, failed) and in a child that installs its own (a peer's death, its
//! poison, its retirement). A subscriber lives in one process: a child's is set
//! up in its `#[process]` body.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pycsp::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{span, Event, Metadata, Subscriber};

#[path = "common/watchdog.rs"]
mod watchdog;

/// One event as a subscriber saw it: target, level and fields (`message` included).
type Seen = (String, String, BTreeMap<String, String>);

/// A subscriber that keeps every event.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields(BTreeMap::new());
        event.record(&mut f);
        let m = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((m.target().to_string(), m.level().to_string(), f.0));
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// The events with `message` `what`.
fn find<'a>(seen: &'a [Seen], what: &str) -> Vec<&'a Seen> {
    seen.iter()
        .filter(|(_, _, f)| f.get("message").is_some_and(|m| m == what))
        .collect()
}

// ANCHOR: child_subscriber
/// Installs a subscriber in this child, reads until its writer dies, poisons `out`, retires
/// `inp`, and returns what the subscriber saw.
#[process]
fn observer(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Vec<Seen> {
    // A child does not run `main`: its subscriber is set up in its body.
    let rec = Recorder::default();
    let _guard = tracing::subscriber::set_default(rec.clone());
    while inp.read().is_ok() {}
    out.poison();
    drop(inp);
    rec.take()
}
// ANCHOR_END: child_subscriber

#[process]
fn crasher(out: ChannelOut<u64>) {
    out.write(1).unwrap();
    panic!("deliberate crash");
}

#[test]
fn process_and_channel_events_reach_a_subscriber_in_the_root_and_in_a_child() {
    let rec = Recorder::default();
    tracing::subscriber::set_global_default(rec.clone()).unwrap();
    // A hang fails the test: the watchdog poisons the channels after a minute.
    let (pids, seen_child, crashed) =
        watchdog::within(Duration::from_secs(60), &["events-c", "events-d"], || {
            let c = Channel::<u64>::named("events-c").unwrap();
            let d = Channel::<u64>::named("events-d").unwrap();
            let _keep = d.reader();
            let h = Spawn((observer(c.reader(), d.writer()), crasher(c.writer()))).unwrap();
            drop((c, d));
            let pids = h.pids();
            let (seen_child, crashed) = h.join_outcomes();
            (pids, seen_child.unwrap(), crashed.is_err())
        });
    assert!(crashed);
    let seen_root = rec.take();
    let me = std::process::id().to_string();
    let (obs, cra) = (pids[0].to_string(), pids[1].to_string());

    // The root: both starts, with pid and parent; one return, one failure with its text.
    let started = find(&seen_root, "process started");
    assert_eq!(started.len(), 2, "{seen_root:?}");
    for (t, l, f) in &started {
        assert_eq!((t.as_str(), l.as_str()), ("pycsp::process", "INFO"));
        assert_eq!(f["parent"], me);
        assert!(f["pid"] == obs || f["pid"] == cra, "{f:?}");
    }
    let ended = find(&seen_root, "process ended");
    assert_eq!(ended.len(), 1, "{seen_root:?}");
    assert_eq!(ended[0].2["pid"], obs);
    assert_eq!(ended[0].2["outcome"], "returned");
    let failed = find(&seen_root, "process failed");
    assert_eq!(failed.len(), 1, "{seen_root:?}");
    assert_eq!(failed[0].1, "WARN");
    assert_eq!(failed[0].2["pid"], cra);
    assert!(failed[0].2["name"].ends_with("crasher"));
    assert!(
        failed[0].2["failure"].contains("deliberate crash"),
        "{:?}",
        failed[0]
    );

    // The child: the writer's death, its poison and its retirement. (Its start happened
    // before its body installed the subscriber: the parent reports it.)
    let died = find(&seen_child, "peer died");
    assert!(!died.is_empty(), "{seen_child:?}");
    assert_eq!(died[0].0, "pycsp::channel");
    assert_eq!(died[0].2["channel"], "events-c");
    assert_eq!(died[0].2["pid"], cra);
    assert!(died[0].2["process"].ends_with("crasher"));
    let poisoned = find(&seen_child, "channel poisoned");
    assert_eq!(poisoned.len(), 1, "{seen_child:?}");
    assert_eq!(poisoned[0].2["channel"], "events-d");
    let retired = find(&seen_child, "end retired");
    assert!(
        retired
            .iter()
            .any(|(_, l, f)| l == "DEBUG" && f["channel"] == "events-c" && f["side"] == "reader"),
        "{seen_child:?}"
    );
}
