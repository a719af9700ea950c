//! Byte buffers travel as MessagePack `bin`: one byte per byte, however high the bytes.

use pycsp::prelude::*;
use serde::{Deserialize, Serialize};

/// 1 MiB of bytes of 0x80 and more (a plain `Vec<u8>` of these encodes to 2 MiB).
fn high_bytes() -> Vec<u8> {
    (0..1 << 20).map(|i| 0x80 | (i % 128) as u8).collect()
}

#[test]
fn a_mebibyte_of_high_bytes_encodes_to_about_a_mebibyte() {
    let data = high_bytes();
    let enc = rmp_serde::to_vec(&Bytes::from(data.clone())).unwrap();
    assert!(enc.len() <= (1 << 20) + 5, "encoded to {} bytes", enc.len());
    assert_eq!(enc[0], 0xc6, "not a MessagePack bin 32");
    let back: Bytes = rmp_serde::from_slice(&enc).unwrap();
    assert!(back.0 == data);
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Frame {
    seq: u32,
    #[serde(with = "pycsp::serde_bytes")]
    pixels: Vec<u8>,
}

#[test]
fn a_vec_u8_field_with_serde_bytes_encodes_to_about_its_length() {
    let f = Frame {
        seq: 7,
        pixels: high_bytes(),
    };
    let enc = rmp_serde::to_vec(&f).unwrap();
    assert!(
        enc.len() <= (1 << 20) + 16,
        "encoded to {} bytes",
        enc.len()
    );
    assert_eq!(rmp_serde::from_slice::<Frame>(&enc).unwrap(), f);
}

#[test]
fn bytes_decode_from_a_list_of_numbers_too() {
    // What a plain Vec<u8> (or a peer in another language) sends.
    let enc = rmp_serde::to_vec(&vec![1u8, 200, 255]).unwrap();
    let b: Bytes = rmp_serde::from_slice(&enc).unwrap();
    assert_eq!(b.as_slice(), &[1, 200, 255]);
}

#[process]
fn echo(inp: ChannelIn<Bytes>, out: ChannelOut<Bytes>) -> Result<(), ChannelError> {
    let b = inp.read()?;
    out.write(b)
}

#[test]
fn a_mebibyte_of_bytes_crosses_processes_intact() {
    let there = Channel::<Bytes>::named("bytes-there").unwrap();
    let back = Channel::<Bytes>::named("bytes-back").unwrap();
    let data = high_bytes();
    let h = Spawn(echo(there.reader(), back.writer())).unwrap();
    there.writer().write(Bytes::from(data.clone())).unwrap();
    let got = back.reader().read().unwrap();
    assert!(got.0 == data, "the bytes came back changed");
    h.join().unwrap().unwrap();
}
