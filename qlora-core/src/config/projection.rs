//! The linear projections of a decoder layer, what LoRA adapts: their names as PEFT's
//! `target_modules` write them, and their tensors in the model's table. LLaMA's layer has
//! seven; Phi-3's fuses the query, key and value projections into one and the gate and up
//! projections into another ([`super::Architecture::projections`]).

use super::tensors::ModelTensor;

/// The linear projections of a decoder layer, in checkpoint (and PEFT) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// Queries.
    Q,
    /// Keys.
    K,
    /// Values.
    V,
    /// Queries, keys and values in one (Phi-3's `qkv_proj`: their rows stacked).
    Qkv,
    /// The attention's output.
    O,
    /// The MLP's gate.
    Gate,
    /// The MLP's up projection.
    Up,
    /// The gate and up projections in one (Phi-3's `gate_up_proj`: gate rows, then up rows).
    GateUp,
    /// The MLP's down projection.
    Down,
}

impl Projection {
    /// Every projection any family has, in checkpoint order.
    pub const ALL: [Projection; 9] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::Qkv,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::GateUp,
        Projection::Down,
    ];

    /// Where the projection sits among LLaMA's seven (a fused one where its first part does):
    /// what numbers an adapter within its layer, so LLaMA's numbering stays as it was.
    pub fn slot(self) -> usize {
        match self {
            Projection::Q | Projection::Qkv => 0,
            Projection::K => 1,
            Projection::V => 2,
            Projection::O => 3,
            Projection::Gate | Projection::GateUp => 4,
            Projection::Up => 5,
            Projection::Down => 6,
        }
    }

    /// Slots of a layer's adapters ([`Projection::slot`]).
    pub const SLOTS: usize = 7;

    /// The number of the projection's adapter in `layer` (what its dropout stream is drawn
    /// by): the model's linears numbered in order, whether adapted or not.
    pub fn adapter_key(self, layer: usize) -> u64 {
        (layer * Self::SLOTS + self.slot()) as u64
    }

    /// The name PEFT's `target_modules` use: `q_proj`, ..., `down_proj`.
    pub fn name(self) -> &'static str {
        self.module().rsplit('.').next().expect("module path")
    }

    /// The projection's tensor in the model's table.
    pub fn tensor(self) -> ModelTensor {
        match self {
            Projection::Q => ModelTensor::AttnQ,
            Projection::K => ModelTensor::AttnK,
            Projection::V => ModelTensor::AttnV,
            Projection::Qkv => ModelTensor::AttnQkv,
            Projection::O => ModelTensor::AttnOutput,
            Projection::Gate => ModelTensor::FfnGate,
            Projection::Up => ModelTensor::FfnUp,
            Projection::GateUp => ModelTensor::FfnGateUp,
            Projection::Down => ModelTensor::FfnDown,
        }
    }

    /// The path inside a decoder layer: `self_attn.q_proj`, ..., `mlp.down_proj`.
    pub fn module(self) -> &'static str {
        self.tensor().hf_module()
    }

    /// The projection called `name` (`q_proj`, ...).
    pub fn from_name(name: &str) -> Option<Projection> {
        Projection::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        Projection::ALL.map(Projection::name).join(", ")
    }

    /// The module path in a model: `model.layers.3.self_attn.q_proj`.
    pub fn path(self, layer: usize) -> String {
        self.tensor().hf_path(layer)
    }

    /// The checkpoint name of the weight: `model.layers.3.self_attn.q_proj.weight`.
    pub fn weight_name(self, layer: usize) -> String {
        self.tensor().hf_name(layer, "weight")
    }
}
