//! What every way of starting a process shares: the process with its arguments, where it
//! runs, and what a start that fails does to the ends it was given.

use serde::Serialize;

use super::table::display_name;
use crate::error::Error;
use crate::runtime::{collect_transfers, poison_keys, release_keys, Role};

pub(crate) trait ErasedArgs: Send {
    fn encode(&self) -> Result<Vec<u8>, String>;
}

impl<A: Serialize + Send> ErasedArgs for A {
    fn encode(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec(self).map_err(|e| e.to_string())
    }
}

/// A process whose return type has been forgotten, as the combinators handle it.
#[doc(hidden)]
pub struct ErasedProcess {
    pub(crate) name: &'static str,
    pub(crate) args: Box<dyn ErasedArgs>,
    pub(crate) placement: Option<Placement>,
}

/// Where to run a process other than as a local child: a **launcher** command template, run
/// with `sh -c`, in which `{cmd}` stands for the command that starts this same binary as that
/// process. Existing launchers do the placing:
///
/// ```
/// use pycsp_core::Placement;
/// let netns = Placement::launcher("ip netns exec blue {cmd}").reach_back("10.77.0.1");
/// let ssh = Placement::launcher("ssh worker7 {cmd}").reach_back("10.0.0.1");
/// let slurm = Placement::launcher("srun -N1 -n1 {cmd}");
/// # let _ = (netns, ssh, slurm);
/// ```
///
/// The placed process connects back to this one over TCP, at the `reach_back` address (an
/// address of this machine that the other host can reach; default `127.0.0.1`), proves it
/// knows the network's key (see [`crate::net`]) and receives its arguments; its channels must
/// be socket channels. The binary must exist at the same path there (`{cmd}` uses this
/// binary's absolute path). If the connection to a placed process is lost for longer than
/// [`crate::net::LOSS_TIMEOUT`], its launcher is killed and the combinator reports
/// [`Failure::Lost`](crate::Failure::Lost).
///
/// A placed process lives only as long as its launcher: if the launcher ends (an `ssh`
/// session killed, a Slurm step cancelled) while the process's connection is silent, the
/// connection is closed after 2 s, the process exits, and its peers get `PeerDied` naming it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub(crate) template: String,
    pub(crate) reach_back: String,
}

impl Placement {
    /// A placement by the launcher `template` (it must contain `{cmd}`).
    pub fn launcher(template: &str) -> Placement {
        Placement {
            template: template.to_string(),
            reach_back: "127.0.0.1".into(),
        }
    }

    /// The address of this machine the placed process connects back to.
    pub fn reach_back(mut self, ip: &str) -> Placement {
        self.reach_back = ip.to_string();
        self
    }
}

/// The error for a process `name` that could not be started.
pub(crate) fn spawn_error(name: &'static str, reason: String) -> Error {
    Error::Spawn {
        name: display_name(name).to_string(),
        reason,
    }
}

/// A process being started, once its arguments are encoded: the channels (keys) and roles
/// of the ends that went with them.
pub(crate) struct Launch {
    pub(crate) name: &'static str,
    pub(crate) transfers: Vec<(u64, Role)>,
}

impl Launch {
    /// Encodes the arguments of process `name`: the ends among them now belong to the child.
    pub(crate) fn encode(
        name: &'static str,
        args: Box<dyn ErasedArgs>,
    ) -> Result<(Launch, Vec<u8>), Error> {
        let (bytes, transfers) = collect_transfers(|| args.encode());
        drop(args); // the ends inside were moved to the child by encoding them
        let launch = Launch { name, transfers };
        let bytes =
            bytes.map_err(|e| launch.fail(format!("its arguments cannot be encoded: {e}")))?;
        Ok((launch, bytes))
    }

    /// The channels of the ends the arguments carried.
    pub(crate) fn keys(&self) -> Vec<u64> {
        self.transfers.iter().map(|&(k, _)| k).collect()
    }

    /// The start failed after the arguments were encoded: poisons the ends they carried, and
    /// lets go of them (they reach no process).
    pub(crate) fn fail(&self, reason: String) -> Error {
        poison_keys(&self.keys());
        release_keys(&self.transfers);
        spawn_error(self.name, reason)
    }
}
