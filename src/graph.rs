//! The instance graph. A [`GraphBuilder`] collects instances and edges; a
//! sealed [`Graph`] is acyclic, topologically ordered and immutable.

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::ir::Pipeline;

/// A graph under construction.
#[derive(Default)]
pub struct GraphBuilder {
    g: DiGraph<usize, ()>,
}

impl GraphBuilder {
    pub fn new() -> GraphBuilder {
        GraphBuilder::default()
    }

    /// Adds instance `id`; ids must be added as 0, 1, 2, ...
    pub fn add_instance(&mut self, id: usize) {
        let n = self.g.add_node(id);
        debug_assert_eq!(n.index(), id);
    }

    /// `to` reads an output of `from`.
    pub fn add_edge(&mut self, from: usize, to: usize) {
        self.g
            .add_edge(NodeIndex::new(from), NodeIndex::new(to), ());
    }

    /// Checks for cycles and fixes the order. On a cycle, returns the ids in it.
    /// The order is stable: among instances whose inputs are ready, the
    /// lowest id comes first.
    pub fn seal(self) -> Result<Graph, Vec<usize>> {
        let order = crate::topo::stable_order(&self.g);
        if order.len() == self.g.node_count() {
            return Ok(Graph { order, g: self.g });
        }
        let cycle = crate::topo::cycles(&self.g)
            .into_iter()
            .next()
            .unwrap_or_default();
        Err(cycle
            .into_iter()
            .map(|i| self.g[NodeIndex::new(i)])
            .collect())
    }
}

/// A sealed, acyclic instance graph.
#[derive(Debug)]
pub struct Graph {
    g: DiGraph<usize, ()>,
    order: Vec<usize>,
}

impl Graph {
    /// The graph of a checked pipeline (acyclic by construction).
    pub fn of(p: &Pipeline) -> Graph {
        let mut b = GraphBuilder::new();
        for i in &p.instances {
            b.add_instance(i.id);
        }
        for i in &p.instances {
            for &d in &i.deps {
                b.add_edge(d, i.id);
            }
        }
        b.seal()
            .expect("the checker orders stages, so instances cannot form a cycle")
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// Every instance, each after all it depends on.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Every instance grouped by depth: level 0 depends on nothing, level
    /// k on instances of levels below k only, so the instances of one level
    /// can be handled at the same time. Within a level, in [`Graph::order`].
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let mut depth = vec![0usize; self.len()];
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for &id in &self.order {
            let d = self.deps(id).map(|p| depth[p] + 1).max().unwrap_or(0);
            depth[id] = d;
            if levels.len() <= d {
                levels.resize_with(d + 1, Vec::new);
            }
            levels[d].push(id);
        }
        levels
    }

    pub fn deps(&self, id: usize) -> impl Iterator<Item = usize> + '_ {
        self.g
            .neighbors_directed(NodeIndex::new(id), Direction::Incoming)
            .map(|n| n.index())
    }

    /// The targets and everything they depend on, as a mask.
    pub fn upstream_closure(&self, targets: &[usize]) -> Vec<bool> {
        let mut mask = vec![false; self.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(i) = stack.pop() {
            if !mask[i] {
                mask[i] = true;
                stack.extend(self.deps(i));
            }
        }
        mask
    }

    /// Graphviz DOT, one node per instance; `stale` instances drawn red.
    pub fn to_dot(&self, p: &Pipeline, stale: &dyn Fn(usize) -> bool) -> String {
        let mut s = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n",
            esc(&p.name)
        );
        for &i in &self.order {
            let inst = &p.instances[i];
            let (fill, note) = if stale(i) {
                ("#f8d0d0", "\\nstale")
            } else {
                ("#d4ecd4", "")
            };
            s.push_str(&format!(
                "  n{i} [label=\"{}\\n({}){note}\", fillcolor=\"{fill}\"];\n",
                esc(&inst.name),
                esc(inst.op)
            ));
        }
        for &i in &self.order {
            for d in self.deps(i) {
                s.push_str(&format!("  n{d} -> n{i};\n"));
            }
        }
        s.push_str("}\n");
        s
    }

    /// Mermaid flowchart; stale instances get the `stale` class.
    pub fn to_mermaid(&self, p: &Pipeline, stale: &dyn Fn(usize) -> bool) -> String {
        let mut s = String::from(
            "flowchart LR\n  classDef stale fill:#f8d0d0,stroke:#b00;\n  classDef fresh fill:#d4ecd4,stroke:#080;\n",
        );
        for &i in &self.order {
            let inst = &p.instances[i];
            let class = if stale(i) { "stale" } else { "fresh" };
            s.push_str(&format!(
                "  n{i}[\"{}<br/>({})\"]:::{class}\n",
                inst.name.replace('"', "#quot;"),
                inst.op
            ));
        }
        for &i in &self.order {
            for d in self.deps(i) {
                s.push_str(&format!("  n{d} --> n{i}\n"));
            }
        }
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_orders_dependencies_first() {
        let mut b = GraphBuilder::new();
        for i in 0..4 {
            b.add_instance(i);
        }
        b.add_edge(2, 1);
        b.add_edge(1, 0);
        b.add_edge(3, 0);
        let g = b.seal().unwrap();
        let pos = |x| g.order().iter().position(|&i| i == x).unwrap();
        assert!(pos(2) < pos(1) && pos(1) < pos(0) && pos(3) < pos(0));
        assert_eq!(g.upstream_closure(&[1]), vec![false, true, true, false]);
    }

    #[test]
    fn levels_put_each_instance_one_above_its_deepest_dependency() {
        let mut b = GraphBuilder::new();
        for i in 0..5 {
            b.add_instance(i);
        }
        // 4 → 3 → 1 → 0, and 2 → 0: 0 waits for the longer chain.
        b.add_edge(4, 3);
        b.add_edge(3, 1);
        b.add_edge(1, 0);
        b.add_edge(2, 0);
        let mut levels = b.seal().unwrap().levels();
        for l in &mut levels {
            l.sort();
        }
        assert_eq!(levels, vec![vec![2, 4], vec![3], vec![1], vec![0]]);
    }

    #[test]
    fn seal_reports_a_cycle() {
        let mut b = GraphBuilder::new();
        for i in 0..3 {
            b.add_instance(i);
        }
        b.add_edge(0, 1);
        b.add_edge(1, 2);
        b.add_edge(2, 1);
        let mut c = b.seal().unwrap_err();
        c.sort();
        assert_eq!(c, vec![1, 2]);
    }
}
