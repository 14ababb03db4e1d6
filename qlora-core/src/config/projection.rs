//! The seven linear projections of a decoder layer, what LoRA adapts: their names as PEFT's
//! `target_modules` write them, and their tensors in the model's table.

use super::tensors::ModelTensor;

/// The seven linear projections of a decoder layer, in checkpoint (and PEFT) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    /// Queries.
    Q,
    /// Keys.
    K,
    /// Values.
    V,
    /// The attention's output.
    O,
    /// The MLP's gate.
    Gate,
    /// The MLP's up projection.
    Up,
    /// The MLP's down projection.
    Down,
}

impl Projection {
    /// All seven, in checkpoint order.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

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
            Projection::O => ModelTensor::AttnOutput,
            Projection::Gate => ModelTensor::FfnGate,
            Projection::Up => ModelTensor::FfnUp,
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
