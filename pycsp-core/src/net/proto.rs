//! The bodies of the socket protocol's frames, after the handshake.
//!
//! All structured bodies are MessagePack maps (rmp-serde, field names as keys); message bodies
//! (`Write`, `Message`) are the MessagePack encoding of the channel's type, exactly as a
//! shared-memory channel stores it.
//!
//! ```text
//! client                                   server (the channel's host)
//! Open {channel, type_name, fingerprint,
//!       writer, token, process, pid}  ->
//!                                     <-   Opened {capacity, pid, read_window}
//!                                          |  Error {code, message}
//! writer:  Write <message>            ->
//!                                     <-   Done  |  Error
//! reader:  Read                       ->
//!                                     <-   Message <message>  |  Error
//!          Ack | Nack                 ->   (Nack: the host puts back every message
//!                                           not acknowledged)
//! either:  Poison                     ->   <- Done
//!          Retire                     ->   <- Done, then both close
//!          Handoff <u64 token>        ->   <- Done, then both close
//! ```
//!
//! `Error` codes: `poisoned`, `retired`, `peer_died`, `not_found`, `type_mismatch`, `decode`,
//! `too_large`, `protocol`, `auth`, `other`.

use serde::{Deserialize, Serialize};

/// How many messages of a buffered channel a remote reader may ask for ahead, at most, at a
/// pycsp host: its `Read`s not answered plus the messages sent to it and not acknowledged
/// (`Ack`, in order) stay within the window the host says in `Opened`
/// ([`OpenedBody::read_window`]): the channel's capacity, at most this; one on a rendezvous
/// channel. The host refuses a `Read` beyond it as a protocol error.
pub const READ_WINDOW: usize = 256;

/// The window of a host that does not say it in `Opened` (pycsp before the field came): the
/// channel's capacity, at most this.
pub const OLD_READ_WINDOW: u64 = 64;

use crate::error::ChannelError;
use crate::frame::{Frame, Kind};

/// `Open`: which channel, which type, which side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenBody {
    /// The channel's name at the host (the part of the address after the last `/`).
    pub channel: String,
    /// The message type's Rust name (for error messages).
    pub type_name: String,
    /// The message type's fingerprint; must equal the host's, or be 0 to skip the check (the
    /// host still checks that every message written decodes as the channel's type). It is the
    /// 64-bit FNV-1a hash of the Rust type name, XOR the type's size in bytes rotated left by
    /// 56 bits.
    pub fingerprint: u64,
    /// `true` for a writing end, `false` for a reading end.
    pub writer: bool,
    /// The token of an end handed over by another process (`Handoff`), if this is one.
    pub token: Option<u64>,
    /// The opening process's function name, for error messages.
    pub process: String,
    /// The opening process's pid.
    pub pid: u32,
    /// Only check that the channel exists with this type: the host answers and closes, and no
    /// end is opened.
    #[serde(default)]
    pub probe: bool,
}

/// `Opened`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedBody {
    /// The channel's capacity (0: rendezvous).
    pub capacity: u64,
    /// The host's pid (optional, default 0: unknown); on one host, the deadlock census
    /// follows the connection to the host's network.
    #[serde(default)]
    pub pid: u32,
    /// How many messages a reader may ask for ahead (see [`READ_WINDOW`]): its `Read`s not
    /// answered plus the messages sent to it and not acknowledged. Optional: a host that does
    /// not say it allows the channel's capacity, at most [`OLD_READ_WINDOW`], and one on a
    /// rendezvous channel.
    #[serde(default)]
    pub read_window: Option<u64>,
}

impl OpenedBody {
    /// The read window this answer allows (see [`read_window`](Self::read_window)).
    pub fn read_window(&self) -> u64 {
        self.read_window
            .unwrap_or_else(|| self.capacity.min(OLD_READ_WINDOW))
            .max(1)
    }
}

/// `Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure (see the module docs).
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// The error itself, for Rust peers.
    pub detail: Option<ChannelError>,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: &str, message: &str) -> ErrorBody {
        ErrorBody {
            code: code.into(),
            message: message.into(),
            detail: None,
        }
    }

    /// The wire form of a channel error.
    pub fn from_error(e: &ChannelError) -> ErrorBody {
        let code = match e {
            ChannelError::Poisoned => "poisoned",
            ChannelError::Retired => "retired",
            ChannelError::PeerDied { .. } => "peer_died",
            ChannelError::NotFound(_) => "not_found",
            ChannelError::TypeMismatch { .. } => "type_mismatch",
            ChannelError::Decode { .. } => "decode",
            ChannelError::TooLarge { .. } => "too_large",
            ChannelError::Protocol { .. } => "protocol",
            ChannelError::Auth { .. } => "auth",
            ChannelError::Timeout => "timeout",
            _ => "other",
        };
        ErrorBody {
            code: code.into(),
            message: e.to_string(),
            detail: Some(e.clone()),
        }
    }

    /// The channel error it carries (rebuilt from the code for peers that sent no detail).
    pub fn into_error(self, address: &str) -> ChannelError {
        if let Some(d) = self.detail {
            return d;
        }
        match self.code.as_str() {
            "poisoned" => ChannelError::Poisoned,
            "retired" => ChannelError::Retired,
            "timeout" => ChannelError::Timeout,
            "not_found" => ChannelError::NotFound(address.to_string()),
            "auth" => ChannelError::Auth {
                address: address.to_string(),
                reason: self.message,
            },
            _ => ChannelError::Protocol {
                address: address.to_string(),
                reason: format!("the host said: {} ({})", self.message, self.code),
            },
        }
    }

    /// Its frame.
    pub fn frame(&self) -> Frame {
        Frame::new(Kind::Error, encode(self))
    }

    /// Decodes an `Error` body; a malformed one becomes a `protocol` error saying so.
    pub fn decode(body: &[u8]) -> ErrorBody {
        rmp_serde::from_slice(body).unwrap_or_else(|e| {
            ErrorBody::new("protocol", &format!("a malformed Error frame ({e})"))
        })
    }
}

/// MessagePack with field names (maps), for the structured bodies.
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("protocol bodies always encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_does_not_say_its_read_window_allows_the_old_one() {
        #[derive(Serialize)]
        struct OldOpened {
            capacity: u64,
            pid: u32,
        }
        let said = |capacity| -> OpenedBody {
            rmp_serde::from_slice(&encode(&OldOpened { capacity, pid: 1 })).unwrap()
        };
        assert_eq!(said(0).read_window(), 1);
        assert_eq!(said(10).read_window(), 10);
        assert_eq!(said(1000).read_window(), OLD_READ_WINDOW);
    }
}
