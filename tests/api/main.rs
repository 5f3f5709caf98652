//! Integration tests: the real service over real sockets with the generated
//! tonic clients, against real `redis-server` processes the tests start on
//! free loopback ports.

mod helpers;
#[path = "../support/wait.rs"]
mod wait;

mod admin;
mod admission;
mod admission_rate;
mod cluster;
mod errors;
mod estimate_accuracy;
mod fuzz;
mod key_rotation;
mod liveness;
mod opening;
mod operations;
mod polling;
mod protection;
mod queueing;
mod raw_fuzz;
mod readme;
mod receipts;
mod reliability;
mod replicas;
mod sale_day;
mod store_conformance;
mod store_equivalence;
mod sub_lines;
mod tokens;
mod waitroomctl;
mod watch;
