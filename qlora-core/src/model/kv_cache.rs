use burn::tensor::Tensor;

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Per layer, keys and values `[batch, positions, kv_heads * head_dim]`.
    layers: Vec<Option<(Tensor<3>, Tensor<3>)>>,
    len: usize,
    /// Per sequence, whether each cached position is a real token (not padding).
    key_is_token: Vec<Vec<bool>>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            len: 0,
            key_is_token: Vec::new(),
        }
    }

    /// Positions already cached (the offset of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys and values of decoder layer `layer`.
    pub fn layer(&mut self, layer: usize) -> LayerCache<'_> {
        LayerCache {
            entry: &mut self.layers[layer],
        }
    }

    /// Which cached positions of each sequence are real tokens.
    pub fn key_is_token(&self) -> &[Vec<bool>] {
        &self.key_is_token
    }

    /// Record the new positions (after every layer appended them) and whether they are tokens.
    pub fn advance(&mut self, is_token: &[Vec<bool>]) {
        if self.key_is_token.is_empty() {
            self.key_is_token = vec![Vec::new(); is_token.len()];
        }
        for (history, new) in self.key_is_token.iter_mut().zip(is_token) {
            history.extend_from_slice(new);
        }
        self.len += is_token.first().map_or(0, Vec::len);
    }
}

/// One decoder layer's part of a [`KvCache`].
pub struct LayerCache<'a> {
    entry: &'a mut Option<(Tensor<3>, Tensor<3>)>,
}

impl LayerCache<'_> {
    /// Append this step's keys and values `[batch * new, width]` and return all of them,
    /// `[batch * positions, width]`.
    pub fn append(self, k: Tensor<2>, v: Tensor<2>, batch: usize) -> (Tensor<2>, Tensor<2>) {
        let [rows, width] = k.dims();
        let (k, v) = (
            k.reshape([batch, rows / batch, width]),
            v.reshape([batch, rows / batch, width]),
        );
        let (k, v) = match self.entry.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
            None => (k, v),
        };
        *self.entry = Some((k.clone(), v.clone()));
        let total = k.dims()[1];
        (
            k.reshape([batch * total, width]),
            v.reshape([batch * total, width]),
        )
    }
}
