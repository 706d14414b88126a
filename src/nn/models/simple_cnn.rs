//! `simple_cnn`: three blocks of 3×3 conv, batch norm, ReLU and 2×2 max
//! pool (32, 64, 128 channels), then global average pooling. Small and
//! fast: the demo pipeline and the tests train it in seconds.
//!
//! ```
//! use podium::nn::{models::{Backbone, simple_cnn::SimpleCnn}, vars::VarStore};
//! let vars = VarStore::new(&candle_core::Device::Cpu, 0);
//! let net = SimpleCnn::new(&vars.root()).unwrap();
//! let x = candle_core::Tensor::zeros((2, 3, 32, 32), candle_core::DType::F32, vars.device()).unwrap();
//! assert_eq!(net.features(&x, false).unwrap().dims(), [2, 128]);
//! ```

use candle_core::{Module, Result, Tensor};

use super::Backbone;
use crate::nn::kernels::Act;
use crate::nn::layers::{BatchNorm, Conv, batch_norm, conv, global_avg_pool, max_pool_relu};
use crate::nn::vars::Vb;

pub const WIDTHS: [usize; 3] = [32, 64, 128];

pub struct SimpleCnn {
    blocks: Vec<(Conv, BatchNorm)>,
}

impl SimpleCnn {
    pub fn new(vb: &Vb) -> Result<SimpleCnn> {
        let mut cin = 3;
        let mut blocks = Vec::new();
        for (i, &c) in WIDTHS.iter().enumerate() {
            let b = vb.pp("blocks").pp(i);
            blocks.push((
                conv(&b.pp("conv"), cin, c, 3, 1, 1, false)?,
                batch_norm(&b.pp("bn"), c)?,
            ));
            cin = c;
        }
        Ok(SimpleCnn { blocks })
    }
}

impl SimpleCnn {
    /// Each block's output.
    fn stages(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut x = x.clone();
        let mut out = Vec::with_capacity(self.blocks.len());
        for (c, bn) in &self.blocks {
            x = bn.forward_act(&c.forward(&x)?, train, Act::Relu)?;
            if x.dim(2)? >= 2 && x.dim(3)? >= 2 {
                // candle's own max_pool2d scales the gradient by 1/4 (candle 0.11).
                x = max_pool_relu(&x, 2, 2, 0)?;
            }
            out.push(x.clone());
        }
        Ok(out)
    }
}

impl Backbone for SimpleCnn {
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = self.stages(x, train)?;
        global_avg_pool(&s[s.len() - 1])
    }

    fn encoder(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.stages(x, train)
    }

    fn encoder_channels(&self) -> Vec<usize> {
        WIDTHS.to_vec()
    }

    fn encoder_strides(&self) -> Vec<usize> {
        vec![2, 4, 8]
    }

    /// Each 2×2 pool's output cell is centred on the middle of the input
    /// pixels it covers.
    fn pyramid_offsets(&self) -> [f32; 3] {
        self.pyramid_strides().map(|s| s as f32 / 2.0)
    }

    fn feature_dim(&self) -> usize {
        WIDTHS[WIDTHS.len() - 1]
    }

    fn blocks(&self) -> Vec<Vec<String>> {
        (0..self.blocks.len())
            .map(|i| vec![format!("blocks.{i}")])
            .collect()
    }

    fn head_name(&self) -> &'static str {
        "head"
    }
}
