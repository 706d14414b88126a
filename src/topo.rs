//! Topological order and cycles of a dependency graph whose nodes are
//! `0..n` (stages for the checker, instances for [`crate::graph`]): the one
//! place both take them from.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

/// Kahn's algorithm: every node after the nodes it depends on (edges run
/// from a dependency to its dependant), the lowest-numbered ready node
/// first, so the order is stable. Nodes on a cycle, or after one, are
/// missing.
pub fn stable_order<N>(g: &DiGraph<N, ()>) -> Vec<usize> {
    let n = g.node_count();
    let mut indeg: Vec<usize> = (0..n)
        .map(|i| {
            g.neighbors_directed(NodeIndex::new(i), Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for m in g.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                ready.push(Reverse(m.index()));
            }
        }
    }
    order
}

/// Every cycle's nodes (a strongly connected component of more than one
/// node, or a node with an edge to itself), each sorted, lowest first.
pub fn cycles<N>(g: &DiGraph<N, ()>) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(g)
        .into_iter()
        .filter(|s| s.len() > 1 || g.contains_edge(s[0], s[0]))
        .map(|s| {
            let mut m: Vec<usize> = s.into_iter().map(NodeIndex::index).collect();
            m.sort();
            m
        })
        .collect();
    out.sort();
    out
}

/// A shortest cycle through `members[0]` within `members`, closed (first
/// node again at the end), for a message.
pub fn shortest_cycle<N>(g: &DiGraph<N, ()>, members: &[usize]) -> Vec<usize> {
    let start = members[0];
    let inside: HashSet<usize> = members.iter().copied().collect();
    let mut prev: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut next: Vec<usize> = g
            .neighbors_directed(NodeIndex::new(n), Direction::Outgoing)
            .map(NodeIndex::index)
            .filter(|m| inside.contains(m))
            .collect();
        next.sort();
        for m in next {
            if m == start {
                let mut path = vec![start];
                let mut cur = n;
                while cur != start {
                    path.push(cur);
                    cur = prev[&cur];
                }
                path.push(start);
                let len = path.len();
                path[1..len - 1].reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    members.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(n: usize, edges: &[(usize, usize)]) -> DiGraph<(), ()> {
        let mut g = DiGraph::new();
        for _ in 0..n {
            g.add_node(());
        }
        for &(a, b) in edges {
            g.add_edge(NodeIndex::new(a), NodeIndex::new(b), ());
        }
        g
    }

    #[test]
    fn the_order_is_stable_and_leaves_out_cycles_and_what_follows() {
        // 2 → 0 → 1; 3 alone; 4 ⇄ 5 → 6.
        let g = graph(7, &[(2, 0), (0, 1), (4, 5), (5, 4), (5, 6)]);
        assert_eq!(stable_order(&g), [2, 0, 1, 3]);
        assert_eq!(cycles(&g), [vec![4, 5]]);
        assert_eq!(shortest_cycle(&g, &[4, 5]), [4, 5, 4]);
        let selfloop = graph(2, &[(1, 1)]);
        assert_eq!(cycles(&selfloop), [vec![1]]);
        assert_eq!(shortest_cycle(&selfloop, &[1]), [1, 1]);
    }

    #[test]
    fn the_shortest_cycle_is_named_in_edge_order() {
        // 0 → 1 → 2 → 0 and a longer way 0 → 3 → 4 → 2.
        let g = graph(5, &[(0, 1), (1, 2), (2, 0), (0, 3), (3, 4), (4, 2)]);
        assert_eq!(shortest_cycle(&g, &[0, 1, 2, 3, 4]), [0, 1, 2, 0]);
    }
}
