//! The `${...}` expression language: grammar in `grammar/expr.pest`,
//! parsed here into an [`Expr`] tree and evaluated by [`eval`].

mod eval;
mod parse;
mod template;

pub use eval::{EVal, Env, FUNCTIONS, StageSel, eval, eval_template};
pub use parse::{BinOp, Expr, ExprKind, UnOp, parse_expr};
pub use template::{Segment, SpanMap, Template, parse_template};

#[cfg(test)]
mod tests;
