//! Preference tuning (DPO, ORPO, SimPO): the objectives ([`objective`]) and scoring pairs of
//! sequences with a model ([`scoring`]): batches of pairs, every sequence's summed completion
//! log-probability, and a set of pairs' loss and reward metrics.

mod objective;
mod scoring;

pub use objective::{
    DpoLoss, Method, PairLogps, PairObjective, PreferenceConfig, PreferenceMetrics, PreferenceSums,
    SeqLogp, pair_objective,
};
pub use scoring::{
    PairBatch, collate_pairs, evaluate_pairs, pair_rows, reference_logps, score_reference,
    sequence_logps, without_adapters,
};
