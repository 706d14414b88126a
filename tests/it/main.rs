//! The integration tests, one binary (one link of podium, not nine): the
//! parse and check layers (`check`), the CLI on pipelines (`run`), the remote cache on S3 and a shared directory (`remote`), the ops
//! through `podium op` (`ops_cli`), numerical agreement with the
//! established libraries (`ops_boxes`, `ops_evaluate`, `kernels_torch`,
//! `nn_torch`, `detect_torch`, `segment_torch`), training end to end (`train`,
//! `detect`, `segment`), and the safety guarantees
//! (`safety`). Every workspace comes from [`ws::Ws`].

mod check;
mod detect;
mod detect_torch;
mod kernels_torch;
mod nn_torch;
mod ops_boxes;
mod ops_cli;
mod ops_evaluate;
mod remote;
mod run;
mod safety;
mod segment;
mod segment_torch;
mod slurm;
mod train;
mod ws;
