//! Failures keep what succeeded (a failed `Parallel`'s error holds every process's outcome),
//! and poison spreads from any error type a process returns that says it was poisoned.

use pycsp::prelude::*;
use pycsp::{Error, Failure};

#[process]
fn answer(n: u64) -> u64 {
    n * 2
}

#[process]
fn greet(name: String) -> String {
    format!("hello {name}")
}

#[process]
fn boom() -> u64 {
    panic!("boom");
}

#[test]
fn a_failed_parallel_keeps_the_values_the_others_returned() {
    let err = Parallel((answer(21), boom(), greet("bob".into()))).unwrap_err();
    // The first failure, as before...
    match &err {
        Error::ProcessFailed { name, failure, .. } => {
            assert!(name.ends_with("boom"), "{name}");
            assert_eq!(*failure, Failure::Panicked("boom".into()));
        }
        other => panic!("expected a process failure, got {other:?}"),
    }
    // ...and every process's outcome, in the order of the set.
    let outcomes = err.outcomes().expect("three processes ran");
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].process.ends_with("answer"));
    assert_eq!(outcomes[0].value::<u64>(), Ok(42));
    assert_eq!(
        outcomes[1].failure(),
        Some(&Failure::Panicked("boom".into()))
    );
    assert!(outcomes[1].value::<u64>().is_err());
    assert_eq!(outcomes[2].value::<String>().unwrap(), "hello bob");
    assert_eq!(outcomes.failed().count(), 1);
}

#[test]
fn a_vec_of_processes_keeps_every_outcome_too() {
    let mut set = replicate(3, |i| answer(i as u64));
    set.insert(1, boom());
    let err = Parallel(set).unwrap_err();
    let values: Vec<Option<u64>> = err
        .outcomes()
        .unwrap()
        .iter()
        .map(|o| o.value().ok())
        .collect();
    assert_eq!(values, [Some(0), None, Some(2), Some(4)]);
}

#[test]
fn join_outcomes_gives_each_outcome_typed_in_the_shape_of_the_set() {
    let (a, b, c) = Spawn((
        answer(1),
        boom(),
        vec![greet("x".into()), greet("y".into())],
    ))
    .unwrap()
    .join_outcomes();
    assert_eq!(a.unwrap(), 2);
    assert!(matches!(
        b,
        Err(Error::ProcessFailed {
            failure: Failure::Panicked(_),
            ..
        })
    ));
    let c: Vec<String> = c.into_iter().map(Result::unwrap).collect();
    assert_eq!(c, ["hello x", "hello y"]);
}

#[test]
fn a_sequence_keeps_the_outcomes_of_the_processes_that_ran() {
    let err = Sequence((answer(5), boom(), answer(6))).unwrap_err();
    let outcomes = err.outcomes().unwrap();
    assert_eq!(
        outcomes.len(),
        2,
        "the process after the failure did not run"
    );
    assert_eq!(outcomes[0].value::<u64>(), Ok(10));
}

#[test]
fn a_parallel_that_succeeds_is_unchanged() {
    assert_eq!(
        Parallel((answer(1), greet("z".into()))).unwrap(),
        (2, "hello z".to_string())
    );
}

// Poison spreads from the error types a process may return.

/// Reads from `inp` (poisoned by the test) and returns its error as a `String`; it also holds
/// `out`, which the poison must reach.
#[process]
fn as_string(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), String> {
    let _keep = &out;
    inp.read().map(drop).map_err(|e| e.to_string())
}

/// An error type of the user's that wraps `ChannelError` as its source (as thiserror's
/// `#[from]` does).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum JobError {
    Channel(ChannelError),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job failed")
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JobError::Channel(e) => Some(e),
        }
    }
}

#[process]
fn as_job_error(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), JobError> {
    let _keep = &out;
    inp.read().map(drop).map_err(JobError::Channel)
}

/// An error type that says what it means itself.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Plain(bool);

impl pycsp::AsChannelError for Plain {
    fn as_channel_error(&self) -> Option<ChannelError> {
        self.0.then_some(ChannelError::Poisoned)
    }
}

#[process]
fn as_plain(inp: ChannelIn<u64>, out: ChannelOut<u64>) -> Result<(), Plain> {
    let _keep = &out;
    inp.read()
        .map(drop)
        .map_err(|e| Plain(e == ChannelError::Poisoned))
}

/// Reads from `inp` once: what the process upstream left on its channel.
#[process]
fn downstream(inp: ChannelIn<u64>) -> Result<u64, ChannelError> {
    inp.read()
}

/// Runs `middle` between a poisoned channel and `downstream`; what downstream read.
fn spread_through<E>(
    middle: impl FnOnce(ChannelIn<u64>, ChannelOut<u64>) -> Process<Result<(), E>>,
) -> Result<u64, ChannelError>
where
    E: serde::de::DeserializeOwned,
{
    let first = Channel::<u64>::new().unwrap();
    let second = Channel::<u64>::new().unwrap();
    first.poison();
    let (_, got) = Parallel((
        middle(first.reader(), second.writer()),
        downstream(second.reader()),
    ))
    .unwrap();
    got
}

#[test]
fn poison_spreads_from_a_string_error() {
    assert_eq!(spread_through(as_string), Err(ChannelError::Poisoned));
}

#[test]
fn boxed_and_io_errors_say_they_were_poisoned() {
    // Not serializable, so no #[process] can return them; what they say is checked directly.
    use pycsp::AsChannelError;
    let ch = Channel::<u64>::buffered(1).unwrap();
    ch.poison();
    let read = || ch.reader().read().unwrap_err();
    let boxed: Box<dyn std::error::Error + Send + Sync> = read().into();
    assert_eq!(boxed.as_channel_error(), Some(ChannelError::Poisoned));
    let wrapped: Box<dyn std::error::Error> = Box::new(JobError::Channel(read()));
    assert_eq!(wrapped.as_channel_error(), Some(ChannelError::Poisoned));
    let io = std::io::Error::other(read());
    assert_eq!(io.as_channel_error(), Some(ChannelError::Poisoned));
    assert_eq!(
        "the channel was poisoned".as_channel_error(),
        Some(ChannelError::Poisoned)
    );
    assert_eq!("something else".as_channel_error(), None);
}

#[test]
fn poison_spreads_from_an_error_whose_source_is_a_channel_error() {
    assert_eq!(spread_through(as_job_error), Err(ChannelError::Poisoned));
}

#[test]
fn poison_spreads_from_an_error_type_that_implements_as_channel_error() {
    assert_eq!(spread_through(as_plain), Err(ChannelError::Poisoned));
}
