//! ResNet-18 and ResNet-34 (basic blocks), with torchvision/timm names:
//! `conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, …, `fc`.
//! The stem's overlapping 3×3, stride-2 max pool has a backward here.
//!
//! ```
//! use podium::nn::{models::{Backbone, resnet::ResNet}, vars::VarStore};
//! let vars = VarStore::new(&candle_core::Device::Cpu, 0);
//! let net = ResNet::new(&vars.root(), [2, 2, 2, 2]).unwrap();
//! let x = candle_core::Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, vars.device()).unwrap();
//! assert_eq!(net.features(&x, false).unwrap().dims(), [1, 512]);
//! ```

use candle_core::{Module, Result, Tensor};

use super::Backbone;
use crate::nn::kernels::Act;
use crate::nn::layers::{BatchNorm, Conv, batch_norm, conv, global_avg_pool, max_pool_relu};
use crate::nn::vars::Vb;

struct Block {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

impl Block {
    fn new(vb: &Vb, cin: usize, cout: usize, stride: usize) -> Result<Block> {
        let downsample = if stride != 1 || cin != cout {
            let d = vb.pp("downsample");
            let c = conv(&d.pp(0), cin, cout, 1, stride, 1, false)?;
            Some((c, batch_norm(&d.pp(1), cout)?))
        } else {
            None
        };
        Ok(Block {
            conv1: conv(&vb.pp("conv1"), cin, cout, 3, stride, 1, false)?,
            bn1: batch_norm(&vb.pp("bn1"), cout)?,
            conv2: conv(&vb.pp("conv2"), cout, cout, 3, 1, 1, false)?,
            bn2: batch_norm(&vb.pp("bn2"), cout)?,
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self
            .bn1
            .forward_act(&self.conv1.forward(x)?, train, Act::Relu)?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let short = match &self.downsample {
            Some((c, bn)) => bn.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        (y + short)?.relu()
    }
}

pub struct ResNet {
    conv1: Conv,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    /// `depths`: blocks per stage; [2, 2, 2, 2] is ResNet-18, [3, 4, 6, 3] ResNet-34.
    pub fn new(vb: &Vb, depths: [usize; 4]) -> Result<ResNet> {
        let conv1 = conv(&vb.pp("conv1"), 3, 64, 7, 2, 1, false)?;
        let bn1 = batch_norm(&vb.pp("bn1"), 64)?;
        let mut cin = 64;
        let mut layers = Vec::new();
        for (i, (&n, cout)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
            let l = vb.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::new();
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Block::new(&l.pp(j), cin, cout, stride)?);
                cin = cout;
            }
            layers.push(blocks);
        }
        Ok(ResNet { conv1, bn1, layers })
    }
}

impl ResNet {
    /// The stem (before its max pool) and every stage, keeping each output.
    fn stages(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let stem = self
            .bn1
            .forward_act(&self.conv1.forward(x)?, train, Act::Relu)?;
        let mut x = max_pool_relu(&stem, 3, 2, 1)?;
        let mut out = Vec::with_capacity(self.layers.len() + 1);
        out.push(stem);
        for l in &self.layers {
            for b in l {
                x = b.forward_t(&x, train)?;
            }
            out.push(x.clone());
        }
        Ok(out)
    }
}

impl Backbone for ResNet {
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = self.stages(x, train)?;
        global_avg_pool(&s[s.len() - 1])
    }

    fn encoder(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.stages(x, train)
    }

    fn encoder_channels(&self) -> Vec<usize> {
        vec![64, 64, 128, 256, 512]
    }

    fn encoder_strides(&self) -> Vec<usize> {
        vec![2, 4, 8, 16, 32]
    }

    fn feature_dim(&self) -> usize {
        512
    }

    fn blocks(&self) -> Vec<Vec<String>> {
        let mut v = vec![vec!["conv1".to_string(), "bn1".to_string()]];
        v.extend((1..=4).map(|i| vec![format!("layer{i}")]));
        v
    }

    fn head_name(&self) -> &'static str {
        "fc"
    }
}
