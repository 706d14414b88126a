//! The `${...}` expression language: grammar in `grammar/expr.pest`,
//! parsed here into an [`Expr`] tree and evaluated by [`eval`].

mod eval;
mod parse;
mod span_map;
mod template;

pub use eval::{EVal, Env, FUNCTIONS, StageSel, eval, eval_template};
pub use parse::{BinOp, Expr, ExprKind, UnOp, parse_expr};
pub use span_map::SpanMap;
pub use template::{Segment, Template, parse_template};

#[cfg(test)]
mod tests;
