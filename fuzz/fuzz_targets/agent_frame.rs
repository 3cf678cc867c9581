//! Fuzzes the host-guest protocol's decoders: any byte string must decode to a message or a
//! typed error, never panic, hang or allocate past the frame limit.

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use osvm_agent::proto::{self, Event, Launch, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = proto::decode::<Request>(data);
    let _ = proto::decode::<Response>(data);
    let _ = proto::decode::<Event>(data);
    let _ = proto::decode::<Launch>(data);
    let mut r = Cursor::new(data);
    while proto::read_msg::<Request>(&mut r).is_ok() {}
    let mut r = Cursor::new(data);
    while let Ok(Some(_)) = proto::read_log(&mut r) {}
});
