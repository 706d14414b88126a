//! EfficientNet-B0 with timm's names (`conv_stem`, `blocks.1.0.conv_pw`,
//! `…se.conv_reduce`, `conv_head`, `classifier`), SiLU activations and
//! squeeze-excitation; depthwise convolutions run as one op, not one per
//! channel.
//!
//! ```
//! use podium::nn::{models::{Backbone, efficientnet::EfficientNet}, vars::VarStore};
//! let vars = VarStore::new(&candle_core::Device::Cpu, 0);
//! let net = EfficientNet::b0(&vars.root()).unwrap();
//! let x = candle_core::Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, vars.device()).unwrap();
//! assert_eq!(net.features(&x, false).unwrap().dims(), [1, 1280]);
//! ```

use candle_core::{Module, Result, Tensor};

use super::Backbone;
use crate::nn::kernels::Act;
use crate::nn::layers::{BatchNorm, Conv, batch_norm, conv, global_avg_pool};
use crate::nn::vars::Vb;

/// Squeeze-excitation: pooled features → reduce → SiLU → expand → sigmoid gate.
struct SqueezeExcite {
    reduce: Conv,
    expand: Conv,
}

impl SqueezeExcite {
    fn new(vb: &Vb, c: usize, rd: usize) -> Result<SqueezeExcite> {
        Ok(SqueezeExcite {
            reduce: conv(&vb.pp("conv_reduce"), c, rd, 1, 1, 1, true)?,
            expand: conv(&vb.pp("conv_expand"), rd, c, 1, 1, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.mean_keepdim((2, 3))?;
        let s = self.reduce.forward(&s)?.silu()?;
        let g = candle_nn::ops::sigmoid(&self.expand.forward(&s)?)?;
        x.broadcast_mul(&g)
    }
}

/// A depthwise-separable block (expansion 1) or an inverted residual (MBConv).
struct Block {
    /// 1×1 expansion (absent at expansion 1).
    pw: Option<(Conv, BatchNorm)>,
    dw: Conv,
    bn_dw: BatchNorm,
    se: SqueezeExcite,
    pwl: Conv,
    bn_pwl: BatchNorm,
    skip: bool,
}

impl Block {
    fn new(
        vb: &Vb,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        expand: usize,
    ) -> Result<Block> {
        let mid = cin * expand;
        let rd = ((cin as f64) * 0.25).round().max(1.0) as usize;
        let skip = stride == 1 && cin == cout;
        if expand == 1 {
            Ok(Block {
                pw: None,
                dw: conv(&vb.pp("conv_dw"), mid, mid, k, stride, mid, false)?,
                bn_dw: batch_norm(&vb.pp("bn1"), mid)?,
                se: SqueezeExcite::new(&vb.pp("se"), mid, rd)?,
                pwl: conv(&vb.pp("conv_pw"), mid, cout, 1, 1, 1, false)?,
                bn_pwl: batch_norm(&vb.pp("bn2"), cout)?,
                skip,
            })
        } else {
            Ok(Block {
                pw: Some((
                    conv(&vb.pp("conv_pw"), cin, mid, 1, 1, 1, false)?,
                    batch_norm(&vb.pp("bn1"), mid)?,
                )),
                dw: conv(&vb.pp("conv_dw"), mid, mid, k, stride, mid, false)?,
                bn_dw: batch_norm(&vb.pp("bn2"), mid)?,
                se: SqueezeExcite::new(&vb.pp("se"), mid, rd)?,
                pwl: conv(&vb.pp("conv_pwl"), mid, cout, 1, 1, 1, false)?,
                bn_pwl: batch_norm(&vb.pp("bn3"), cout)?,
                skip,
            })
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        if let Some((c, bn)) = &self.pw {
            y = bn.forward_act(&c.forward(&y)?, train, Act::Silu)?;
        }
        y = self
            .bn_dw
            .forward_act(&self.dw.forward(&y)?, train, Act::Silu)?;
        y = self.se.forward(&y)?;
        y = self.bn_pwl.forward_t(&self.pwl.forward(&y)?, train)?;
        if self.skip { y + x } else { Ok(y) }
    }
}

/// (repeats, kernel, stride, expansion, out channels) per stage of B0.
const B0: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];

pub struct EfficientNet {
    stem: Conv,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
    /// `conv_head` and `bn2`: none in a trunk for detection, which reads
    /// the stages' maps.
    head: Option<(Conv, BatchNorm)>,
}

impl EfficientNet {
    pub fn b0(vb: &Vb) -> Result<EfficientNet> {
        Self::build(vb, true)
    }

    /// B0 without `conv_head`: the trunk a detection neck reads.
    pub fn b0_trunk(vb: &Vb) -> Result<EfficientNet> {
        Self::build(vb, false)
    }

    fn build(vb: &Vb, with_head: bool) -> Result<EfficientNet> {
        let stem = conv(&vb.pp("conv_stem"), 3, 32, 3, 2, 1, false)?;
        let bn1 = batch_norm(&vb.pp("bn1"), 32)?;
        let mut cin = 32;
        let mut stages = Vec::new();
        for (i, &(n, k, s, e, cout)) in B0.iter().enumerate() {
            let mut blocks = Vec::new();
            for j in 0..n {
                let stride = if j == 0 { s } else { 1 };
                blocks.push(Block::new(
                    &vb.pp("blocks").pp(i).pp(j),
                    cin,
                    cout,
                    k,
                    stride,
                    e,
                )?);
                cin = cout;
            }
            stages.push(blocks);
        }
        Ok(EfficientNet {
            stem,
            bn1,
            stages,
            head: if with_head {
                Some((
                    conv(&vb.pp("conv_head"), cin, 1280, 1, 1, 1, false)?,
                    batch_norm(&vb.pp("bn2"), 1280)?,
                ))
            } else {
                None
            },
        })
    }
}

impl EfficientNet {
    /// The stem and every stage, keeping each stage's output.
    fn stages(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut x = self
            .bn1
            .forward_act(&self.stem.forward(x)?, train, Act::Silu)?;
        let mut out = Vec::with_capacity(self.stages.len());
        for s in &self.stages {
            for b in s {
                x = b.forward_t(&x, train)?;
            }
            out.push(x.clone());
        }
        Ok(out)
    }
}

impl Backbone for EfficientNet {
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let Some((head, bn2)) = &self.head else {
            candle_core::bail!("an EfficientNet trunk has no conv_head: it gives no features");
        };
        let s = self.stages(x, train)?;
        let x = bn2.forward_act(&head.forward(&s[s.len() - 1])?, train, Act::Silu)?;
        global_avg_pool(&x)
    }

    /// Stages 0, 1, 2, 4 and 6 (timm's `features_only`): 16, 24, 40, 112
    /// and 320 channels at strides 2 to 32.
    fn encoder(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let s = self.stages(x, train)?;
        Ok([0, 1, 2, 4, 6].map(|i| s[i].clone()).to_vec())
    }

    fn encoder_channels(&self) -> Vec<usize> {
        vec![16, 24, 40, 112, 320]
    }

    fn encoder_strides(&self) -> Vec<usize> {
        vec![2, 4, 8, 16, 32]
    }

    fn feature_dim(&self) -> usize {
        1280
    }

    fn blocks(&self) -> Vec<Vec<String>> {
        let mut v = vec![vec!["conv_stem".to_string(), "bn1".to_string()]];
        v.extend((0..self.stages.len()).map(|i| vec![format!("blocks.{i}")]));
        if self.head.is_some() {
            v.push(vec!["conv_head".to_string(), "bn2".to_string()]);
        }
        v
    }

    fn head_name(&self) -> &'static str {
        "classifier"
    }
}
