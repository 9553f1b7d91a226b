//! The pieces of `kvbench::paced` that watchbench's figures rest on: an event's key maps back to
//! its put, /proc/PID/stat is read right, acknowledgements are found by sequence number.

use std::time::{Duration, Instant};

use kvbench::paced::{endpoint_url, parse_pids, seq_of_key, stat_cpu_ticks, AckLog};

#[test]
fn an_event_key_gives_back_the_sequence_number_of_its_put() {
    assert_eq!(seq_of_key(b"wb/", b"wb/00001234"), Some(1234));
    assert_eq!(seq_of_key(b"wb/", b"lb/00001234"), None);
    assert_eq!(seq_of_key(b"wb/", b"wb/12x"), None);
}

#[test]
fn stat_cpu_ticks_adds_utime_and_stime_even_with_spaces_in_the_command_name() {
    // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    let stat = "42 (etcd (m1) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
    assert_eq!(stat_cpu_ticks(stat), 325);
    assert_eq!(stat_cpu_ticks("garbage"), 0);
}

#[test]
fn the_ack_log_keeps_each_acknowledgement_by_sequence_number() {
    let acks = AckLog::new(4);
    let at = Instant::now() + Duration::from_millis(3);
    assert!(acks.get(2).is_none());
    acks.record(2, at);
    acks.record(9, at); // beyond the capacity: ignored
    let got = acks.get(2).expect("recorded");
    assert!(got.max(at) - got.min(at) < Duration::from_micros(1));
    assert!(acks.get(9).is_none());
}

#[test]
fn endpoints_and_pids_are_parsed() {
    assert_eq!(endpoint_url("127.0.0.1:1"), "http://127.0.0.1:1");
    assert_eq!(endpoint_url("http://h:2"), "http://h:2");
    assert_eq!(parse_pids("1,,23").expect("valid"), vec![1, 23]);
    assert!(parse_pids("1,x").is_err());
}
