//! The seven linear projections of a LLaMA decoder layer: one table for names, module paths
//! and checkpoint keys.

/// The seven linear projections of a LLaMA decoder layer, in checkpoint (and PEFT) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
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

    /// The path inside a decoder layer: `self_attn.q_proj`, ..., `mlp.down_proj`.
    pub fn module(self) -> &'static str {
        match self {
            Projection::Q => "self_attn.q_proj",
            Projection::K => "self_attn.k_proj",
            Projection::V => "self_attn.v_proj",
            Projection::O => "self_attn.o_proj",
            Projection::Gate => "mlp.gate_proj",
            Projection::Up => "mlp.up_proj",
            Projection::Down => "mlp.down_proj",
        }
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
        format!("model.layers.{layer}.{}", self.module())
    }

    /// The checkpoint name of the weight: `model.layers.3.self_attn.q_proj.weight`.
    pub fn weight_name(self, layer: usize) -> String {
        format!("{}.weight", self.path(layer))
    }
}
