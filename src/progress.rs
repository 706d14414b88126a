//! How far long work has got: what ops and the training loop report, and
//! what the command line draws as progress bars.

/// How far an op has got: `done` of `total` units (batches, images), and a
/// short line such as `epoch 3/10  loss 0.412`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// Receives [`Step`]s.
pub type Report<'a> = dyn Fn(&Step) + Sync + 'a;

/// A [`Report`] that goes nowhere.
pub fn no_report(_: &Step) {}
