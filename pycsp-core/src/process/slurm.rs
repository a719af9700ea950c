//! Placements from a Slurm allocation: the nodes and tasks that `sbatch` or `salloc` granted,
//! so that one `Parallel` in a batch script spreads a farm over the whole allocation.
//!
//! ```no_run
//! use pycsp_core::slurm::Allocation;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a batch script's program: SLURM_JOB_NODELIST=node[1-2], SLURM_TASKS_PER_NODE=2(x2).
//! let alloc = Allocation::from_env()?;
//! // Worker i runs on a task of the allocation, by `srun ... --nodelist=NODE {cmd}`; the
//! // workers take turns over the nodes: node1, node2, node1, node2.
//! let places: Vec<_> = (0..alloc.tasks()).map(|i| alloc.place(i)).collect();
//! # let _ = places;
//! # Ok(())
//! # }
//! ```

use super::launch::Placement;

/// The most host names a node list may expand to (a typo such as `n[1-999999999]` is an
/// error, not an allocation of gigabytes).
const MAX_NODES: usize = 1 << 20;

/// A node list or task count that cannot be read, or an environment with no allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AllocationError(String);

fn bad(what: impl Into<String>) -> AllocationError {
    AllocationError(what.into())
}

/// The nodes of a Slurm allocation and how many tasks each may run, with the placements that
/// run a process on them through `srun`.
///
/// Replica `i` ([`place`](Self::place)) goes to task `i` modulo the number of tasks, and the
/// tasks are ordered by taking one from each node in turn (as far as each node has tasks), so
/// fewer processes than tasks are spread over as many nodes as possible. Each placement runs
/// `srun --nodes=1 --ntasks=1 --overlap --nodelist=NODE --quiet {cmd}`: inside an allocation
/// it is a job step (`--overlap`: steps share the allocation's CPUs, so more processes than
/// tasks do not wait for each other); outside one, `srun` makes a job for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    nodes: Vec<String>,
    tasks_per_node: Vec<usize>,
    srun: String,
    reach_back: Option<String>,
}

impl Allocation {
    /// The allocation this program runs in, from the variables Slurm sets in a batch script
    /// or an `salloc` shell: `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`), and
    /// `SLURM_TASKS_PER_NODE`, else `SLURM_NTASKS` tasks spread evenly, else one task a node.
    pub fn from_env() -> Result<Allocation, AllocationError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let list = var("SLURM_JOB_NODELIST")
            .or_else(|| var("SLURM_NODELIST"))
            .ok_or_else(|| {
                bad(
                    "not in a Slurm allocation: SLURM_JOB_NODELIST is not set (run under \
                     sbatch, salloc or srun)",
                )
            })?;
        let nodes = expand_nodelist(&list)?;
        if let Some(per) = var("SLURM_TASKS_PER_NODE") {
            let per = expand_tasks_per_node(&per)?;
            if per.len() == nodes.len() {
                return Ok(Allocation::with(nodes, per));
            }
        }
        let tasks = match var("SLURM_NTASKS") {
            Some(n) => n
                .trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("SLURM_NTASKS={n:?} is not a number")))?,
            None => nodes.len(),
        };
        Allocation::spread(nodes, tasks)
    }

    /// An allocation of `tasks` tasks on the nodes of `nodelist` (Slurm's syntax, such as
    /// `node[1-3,5],other`), spread evenly over them (the first nodes take one more when they
    /// do not divide).
    pub fn new(nodelist: &str, tasks: usize) -> Result<Allocation, AllocationError> {
        Allocation::spread(expand_nodelist(nodelist)?, tasks)
    }

    fn spread(nodes: Vec<String>, tasks: usize) -> Result<Allocation, AllocationError> {
        if tasks == 0 {
            return Err(bad("an allocation needs at least one task"));
        }
        let n = nodes.len();
        let per = (0..n)
            .map(|i| tasks / n + usize::from(i < tasks % n))
            .collect();
        Ok(Allocation::with(nodes, per))
    }

    fn with(nodes: Vec<String>, tasks_per_node: Vec<usize>) -> Allocation {
        Allocation {
            nodes,
            tasks_per_node,
            srun: "srun".into(),
            reach_back: None,
        }
    }

    /// The host names of the allocation's nodes, in Slurm's order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// How many tasks each node runs, in the order of [`nodes`](Self::nodes).
    pub fn tasks_per_node(&self) -> &[usize] {
        &self.tasks_per_node
    }

    /// How many tasks the allocation has.
    pub fn tasks(&self) -> usize {
        self.tasks_per_node.iter().sum()
    }

    /// The node that replica `i` runs on: that of task `i` modulo [`tasks`](Self::tasks),
    /// tasks taken one from each node in turn.
    pub fn node_of(&self, i: usize) -> &str {
        let mut i = i % self.tasks().max(1);
        let rounds = self.tasks_per_node.iter().copied().max().unwrap_or(0);
        for round in 0..rounds {
            for (node, &n) in self.nodes.iter().zip(&self.tasks_per_node) {
                if n > round {
                    if i == 0 {
                        return node;
                    }
                    i -= 1;
                }
            }
        }
        &self.nodes[0]
    }

    /// The command that starts `srun`, before its options (default `srun`): a path, options
    /// of your own (`srun --mpi=none`), or variables (`env SLURM_CONF=/etc/other.conf srun`).
    pub fn srun(mut self, command: &str) -> Allocation {
        self.srun = command.to_string();
        self
    }

    /// The address of this host that the placed processes connect back to (see
    /// [`Placement::reach_back`]). By default: `127.0.0.1` when every node of the allocation
    /// is this host, else the address this host uses to reach the first other node.
    pub fn reach_back(mut self, ip: &str) -> Allocation {
        self.reach_back = Some(ip.to_string());
        self
    }

    /// The address of this host the allocation's nodes reach it by (as for
    /// [`reach_back`](Self::reach_back)): the host to put in the `tcp://` addresses of the
    /// channels its processes use.
    pub fn here(&self) -> String {
        if let Some(ip) = &self.reach_back {
            return ip.clone();
        }
        let me = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let me = me.trim();
        let short = |n: &str| n.split('.').next().unwrap_or(n).to_string();
        self.nodes
            .iter()
            .filter(|n| short(n) != short(me) && n.as_str() != "localhost")
            .find_map(|n| route_source(n))
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// The placement of replica `i`: on [`node_of(i)`](Self::node_of), by `srun`, reaching
    /// back to [`here`](Self::here).
    pub fn place(&self, i: usize) -> Placement {
        self.place_on(self.node_of(i))
    }

    /// A placement on `node` by `srun`, reaching back to [`here`](Self::here).
    pub fn place_on(&self, node: &str) -> Placement {
        Placement::launcher(&format!(
            "{} --nodes=1 --ntasks=1 --overlap --nodelist={node} --quiet {{cmd}}",
            self.srun
        ))
        .reach_back(&self.here())
    }
}

/// The local address this host sends from to reach `host` (a UDP `connect` sends nothing).
fn route_source(host: &str) -> Option<String> {
    use std::net::{ToSocketAddrs, UdpSocket};
    let to = (host, 9).to_socket_addrs().ok()?.find(|a| a.is_ipv4())?;
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect(to).ok()?;
    Some(s.local_addr().ok()?.ip().to_string())
}

/// The host names of a Slurm node list: `node[1-3,5],other` is `node1`, `node2`, `node3`,
/// `node5`, `other`. Ranges keep the width of their first number (`n[08-10]` is `n08`, `n09`,
/// `n10`), and several bracketed groups in one name multiply (`r[1-2]n[1-2]` is `r1n1`,
/// `r1n2`, `r2n1`, `r2n2`). Names keep their order, duplicates included.
pub fn expand_nodelist(list: &str) -> Result<Vec<String>, AllocationError> {
    let mut out = Vec::new();
    for item in split_top(list)? {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad(format!("node list {list:?}: an empty name")));
        }
        let mut names = vec![String::new()];
        let mut rest = item;
        while !rest.is_empty() {
            let (literal, group) = match rest.find('[') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            for n in &mut names {
                n.push_str(literal);
            }
            let Some(group) = group else { break };
            let end = group
                .find(']')
                .ok_or_else(|| bad(format!("node list {list:?}: a '[' without ']'")))?;
            let suffixes = expand_ranges(&group[..end])
                .map_err(|e| bad(format!("node list {list:?}: {e}")))?;
            if names.len().saturating_mul(suffixes.len()) + out.len() > MAX_NODES {
                return Err(bad(format!(
                    "node list {list:?}: more than {MAX_NODES} names"
                )));
            }
            names = names
                .iter()
                .flat_map(|n| suffixes.iter().map(move |s| format!("{n}{s}")))
                .collect();
            rest = &group[end + 1..];
        }
        out.extend(names);
    }
    if out.is_empty() {
        return Err(bad("an empty node list"));
    }
    Ok(out)
}

/// `list` split at the commas outside brackets.
fn split_top(list: &str) -> Result<Vec<&str>, AllocationError> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(bad(format!("node list {list:?}: nested '['"))),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(bad(format!("node list {list:?}: a ']' without '['"))),
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad(format!("node list {list:?}: a '[' without ']'")));
    }
    parts.push(&list[start..]);
    Ok(parts)
}

/// The numbers of a bracketed group, `1-3,5`, as strings (zero-padded as written).
fn expand_ranges(group: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for r in group.split(',') {
        let r = r.trim();
        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
        let number = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{r:?} is not a number or a range of numbers"));
            }
            s.parse::<u64>().map_err(|_| format!("{s:?} is too large"))
        };
        let (a, b) = (number(lo)?, number(hi)?);
        if b < a {
            return Err(format!("the range {r:?} goes down"));
        }
        if (b - a) as usize >= MAX_NODES {
            return Err(format!("the range {r:?} has more than {MAX_NODES} numbers"));
        }
        out.extend((a..=b).map(|v| format!("{v:0width$}", width = lo.len())));
    }
    Ok(out)
}

/// The tasks of each node from Slurm's compressed form, `SLURM_TASKS_PER_NODE`: `2(x3),1`
/// is `[2, 2, 2, 1]`.
pub fn expand_tasks_per_node(text: &str) -> Result<Vec<usize>, AllocationError> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let err = || {
            bad(format!(
                "tasks per node {text:?}: {part:?} is not N or N(xM)"
            ))
        };
        let (n, times) = match part.split_once("(x") {
            Some((n, t)) => (n, t.strip_suffix(')').ok_or_else(err)?),
            None => (part, "1"),
        };
        let n: usize = n.parse().map_err(|_| err())?;
        let times: usize = times.parse().map_err(|_| err())?;
        if out.len().saturating_add(times) > MAX_NODES {
            return Err(bad(format!("tasks per node {text:?}: too many nodes")));
        }
        out.extend(std::iter::repeat_n(n, times));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &str) -> Vec<String> {
        expand_nodelist(list).unwrap()
    }

    #[test]
    fn node_lists_expand_as_slurm_writes_them() {
        assert_eq!(names("vm"), ["vm"]);
        assert_eq!(
            names("node[1-3,5],other"),
            ["node1", "node2", "node3", "node5", "other"]
        );
        assert_eq!(names("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(names("r[1-2]n[1,3]"), ["r1n1", "r1n3", "r2n1", "r2n3"]);
        assert_eq!(names("a[1-2].x,b[7]-ib"), ["a1.x", "a2.x", "b7-ib"]);
        assert_eq!(names("gpu[001-002],cpu[9-11]").len(), 5);
        assert_eq!(names("n[0-99999]").len(), 100_000);
    }

    #[test]
    fn malformed_node_lists_are_errors_that_say_why() {
        for (list, why) in [
            ("", "empty"),
            ("a,,b", "empty"),
            ("n[1-3", "without ']'"),
            ("n1-3]", "without '['"),
            ("n[[1]]", "nested"),
            ("n[3-1]", "goes down"),
            ("n[a-b]", "not a number"),
            ("n[]", "not a number"),
            ("n[1-99999999999]", "more than"),
            ("n[1-999],m[1-9999999]", "more than"),
        ] {
            let e = expand_nodelist(list).unwrap_err().to_string();
            assert!(e.contains(why), "{list:?}: {e}");
        }
    }

    #[test]
    fn tasks_per_node_expand() {
        assert_eq!(expand_tasks_per_node("4").unwrap(), [4]);
        assert_eq!(expand_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        for bad in ["", "x", "2(x3", "2(xa)", "-1"] {
            assert!(expand_tasks_per_node(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replicas_take_turns_over_the_nodes_and_their_tasks() {
        let a = Allocation::new("n[1-3]", 5).unwrap();
        assert_eq!(a.tasks_per_node(), [2, 2, 1]);
        assert_eq!(a.tasks(), 5);
        let on: Vec<&str> = (0..7).map(|i| a.node_of(i)).collect();
        assert_eq!(on, ["n1", "n2", "n3", "n1", "n2", "n1", "n2"]);
        let b = Allocation::with(names("a,b"), vec![3, 1]);
        let on: Vec<&str> = (0..4).map(|i| b.node_of(i)).collect();
        assert_eq!(on, ["a", "b", "a", "a"]);
        assert!(Allocation::new("n1", 0).is_err());
    }

    #[test]
    fn a_placement_runs_srun_on_its_node() {
        let a = Allocation::new("n[1-2]", 2)
            .unwrap()
            .srun("env SLURM_CONF=/x/slurm.conf srun")
            .reach_back("10.1.2.3");
        let p = a.place(1);
        assert_eq!(
            p.template,
            "env SLURM_CONF=/x/slurm.conf srun --nodes=1 --ntasks=1 --overlap \
             --nodelist=n2 --quiet {cmd}"
        );
        assert_eq!(p.reach_back, "10.1.2.3");
        assert_eq!(a.here(), "10.1.2.3");
        // Only this host (an unresolvable name is no other host either): the loopback.
        let me = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let local = Allocation::new(me.trim(), 4).unwrap();
        assert_eq!(local.here(), "127.0.0.1");
    }
}
