//! Integration tests of keel-log on real files in temporary directories, in one test binary.

mod basics;
mod crash;
mod faults;
mod fuzz;
mod model;
mod recovery;
mod support;
