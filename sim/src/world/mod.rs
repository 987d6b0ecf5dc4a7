//! The simulated world: the hosts a run is made of and the seams keel runs on.
//!
//! A run has nodes ([`node`]) running keel's real elector, maintainer and
//! workers on simulated time ([`clock`], frozen by [`pause`]) and turmoil TCP
//! ([`net`]), a database host ([`db`]) serving storage over that network, and
//! the jobs they run ([`workload`]).

pub mod clock;
pub mod db;
pub mod net;
pub mod node;
pub mod pause;
pub mod workload;
