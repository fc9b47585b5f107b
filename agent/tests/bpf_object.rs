//! The eBPF object against the oldest verifier Axoneme supports (Linux 6.1,
//! Debian 12's kernel, which the IPsec VM boots): two of its rules that
//! newer kernels relaxed, checked on the object here, so a change that
//! only loads on this machine's newer kernel fails in seconds rather than
//! in the VM.
//!
//! - `check_cfg`: a loop may only close with a jump. 6.1 refuses an edge
//!   back into the instruction being explored when it is the fall-through
//!   of a non-jump instruction or of a call ("back-edge from insn N to
//!   N+1"), which LLVM emits for a loop it enters in its middle.
//! - `check_max_stack_depth`: every frame of a call chain is rounded up to
//!   32 bytes (newer kernels round JITed programs to 16) and the chain must
//!   stay within 512 bytes ("combined stack size of N calls is M. Too
//!   large").
//!
//! Frames are measured as the verifier does: the deepest stack slot the
//! function's instructions touch through r10.

use std::collections::{BTreeMap, HashMap};

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SymbolKind};

const MAX_STACK: u32 = 512;
const FRAME_ROUNDING_6_1: u32 = 32;

/// One function: its section, first instruction and instructions.
struct Function {
    section: String,
    start: usize,
    insns: Vec<[u8; 8]>,
}

struct Program {
    /// (section, first instruction) → function name.
    by_start: HashMap<(String, usize), String>,
    functions: BTreeMap<String, Function>,
    /// (section, instruction index) → where a relocated call's offset
    /// counts from: a section, and an instruction in it (0 for a call
    /// against the section's symbol; a global function's first, for a call
    /// against the function's own symbol).
    call_relocs: HashMap<(String, usize), (String, usize)>,
}

fn load() -> Program {
    let file = object::File::parse(axoneme_agent::datapath::Datapath::object()).unwrap();
    let mut program = Program {
        by_start: HashMap::new(),
        functions: BTreeMap::new(),
        call_relocs: HashMap::new(),
    };
    for section in file.sections() {
        let name = section.name().unwrap().to_string();
        for (offset, reloc) in section.relocations() {
            if let RelocationTarget::Symbol(i) = reloc.target() {
                let symbol = file.symbol_by_index(i).unwrap();
                if let Some(target) = symbol.section_index() {
                    let target = file.section_by_index(target).unwrap();
                    let insn = (offset / 8) as usize;
                    let base = match symbol.kind() {
                        SymbolKind::Text => index(symbol.address()) / 8,
                        _ => 0,
                    };
                    program.call_relocs.insert(
                        (name.clone(), insn),
                        (target.name().unwrap().to_string(), base),
                    );
                }
            }
        }
    }
    for symbol in file.symbols() {
        if symbol.kind() != SymbolKind::Text || symbol.size() == 0 {
            continue;
        }
        let section = file
            .section_by_index(symbol.section_index().unwrap())
            .unwrap();
        let data = section.data().unwrap();
        let from = index(symbol.address());
        let bytes = &data[from..from + index(symbol.size())];
        let section = section.name().unwrap().to_string();
        let name = symbol.name().unwrap().to_string();
        program
            .by_start
            .insert((section.clone(), from / 8), name.clone());
        program.functions.insert(
            name,
            Function {
                section,
                start: from / 8,
                insns: bytes
                    .chunks_exact(8)
                    .map(|c| c.try_into().unwrap())
                    .collect(),
            },
        );
    }
    program
}

const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_JMP32: u8 = 0x06;
const OP_JA: u8 = 0x00;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
const FP: u8 = 10;

/// An offset or instruction index as an index (a negative one is a
/// malformed object).
fn index<T: TryInto<usize> + Copy + std::fmt::Debug>(v: T) -> usize {
    v.try_into()
        .unwrap_or_else(|_| panic!("{v:?} is not an index"))
}

fn off(i: &[u8; 8]) -> i64 {
    i64::from(i16::from_le_bytes([i[2], i[3]]))
}

fn imm(i: &[u8; 8]) -> i64 {
    i64::from(i32::from_le_bytes([i[4], i[5], i[6], i[7]]))
}

/// The edges `check_cfg` follows out of instruction `t`: (target, whether
/// 6.1 lets it close a loop).
fn edges(f: &Function, t: usize) -> Vec<(usize, bool)> {
    let i = &f.insns[t];
    let class = i[0] & 0x07;
    if class != CLASS_JMP && class != CLASS_JMP32 {
        return vec![(t + 1, false)];
    }
    let target = index(t as i64 + off(i) + 1);
    match i[0] & 0xf0 {
        OP_EXIT => vec![],
        OP_CALL => vec![(t + 1, false)],
        OP_JA => vec![(target, true)],
        _ => vec![(t + 1, true), (target, true)],
    }
}

/// Fall-through edges that close a loop in `f`, as "from -> to".
fn loops_closed_by_fall_through(f: &Function) -> Vec<String> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnPath,
        Done,
    }
    let mut state = vec![State::New; f.insns.len() + 1];
    let mut bad = Vec::new();
    let mut stack = vec![(0usize, edges(f, 0), 0usize)];
    state[0] = State::OnPath;
    while let Some((t, out, next)) = stack.last_mut() {
        let t = *t;
        let Some(&(w, loop_ok)) = out.get(*next) else {
            state[t] = State::Done;
            stack.pop();
            continue;
        };
        *next += 1;
        if w >= f.insns.len() {
            continue; // the second half of a 64-bit load, or past the end
        }
        match state[w] {
            State::New => {
                state[w] = State::OnPath;
                stack.push((w, edges(f, w), 0));
            }
            State::OnPath if !loop_ok => bad.push(format!("{t} -> {w}")),
            _ => {}
        }
    }
    bad
}

/// The deepest stack slot `f` touches through r10, in bytes.
fn frame(f: &Function) -> u32 {
    let mut deepest = 0;
    let mut fp_copy: Option<u8> = None;
    for i in &f.insns {
        let (dst, src) = (i[1] & 0x0f, i[1] >> 4);
        let class = i[0] & 0x07;
        let base = match class {
            CLASS_LDX => Some(src),
            CLASS_ST | CLASS_STX => Some(dst),
            _ => None,
        };
        if base == Some(FP) {
            deepest = deepest.max(-off(i));
        }
        // `rX = r10; rX += -N`: a pointer to the stack handed to a helper.
        if i[0] == 0xbf && src == FP {
            fp_copy = Some(dst);
            continue;
        }
        if i[0] == 0x07 && fp_copy == Some(dst) {
            deepest = deepest.max(-imm(i));
        }
        fp_copy = None;
    }
    u32::try_from(deepest.max(0)).expect("a frame within u32")
}

/// The functions `f` calls (BPF-to-BPF calls).
fn callees(p: &Program, f: &Function) -> Vec<String> {
    let mut out = Vec::new();
    for (t, i) in f.insns.iter().enumerate() {
        let pseudo = i[1] >> 4 == 1;
        if i[0] != (CLASS_JMP | OP_CALL) || !pseudo {
            continue;
        }
        let at = f.start + t;
        let (section, index) = match p.call_relocs.get(&(f.section.clone(), at)) {
            Some((section, base)) => (section.clone(), index(*base as i64 + imm(i) + 1)),
            None => (f.section.clone(), index(at as i64 + imm(i) + 1)),
        };
        let callee = p
            .by_start
            .get(&(section.clone(), index))
            .unwrap_or_else(|| panic!("a call to {section}:{index} that starts no function"));
        out.push(callee.clone());
    }
    out
}

/// The deepest call chain from `name`, with 6.1's rounding: its size and
/// the functions with their frames.
fn deepest_chain(p: &Program, name: &str) -> (u32, Vec<(String, u32)>) {
    let f = &p.functions[name];
    let own = frame(f);
    let rounded = own.max(1).div_ceil(FRAME_ROUNDING_6_1) * FRAME_ROUNDING_6_1;
    let mut best = (0, Vec::new());
    for callee in callees(p, f) {
        let chain = deepest_chain(p, &callee);
        if chain.0 > best.0 {
            best = chain;
        }
    }
    let mut chain = vec![(name.to_string(), own)];
    chain.extend(best.1);
    (rounded + best.0, chain)
}

/// The programs: the functions of the sections the loader attaches.
fn programs(p: &Program) -> Vec<&String> {
    let programs: Vec<_> = p
        .functions
        .iter()
        .filter(|(_, f)| f.section == "classifier" || f.section.starts_with("cgroup/"))
        .map(|(name, _)| name)
        .collect();
    assert!(
        programs.len() >= 4,
        "the object's programs were not found: {programs:?}"
    );
    programs
}

#[test]
fn every_loop_closes_with_a_jump_as_linux_6_1_requires() {
    let p = load();
    let mut bad = Vec::new();
    for (name, f) in &p.functions {
        for edge in loops_closed_by_fall_through(f) {
            bad.push(format!("{name}: {edge}"));
        }
    }
    assert!(
        bad.is_empty(),
        "loops 6.1's verifier refuses (\"back-edge\"; write the loop over an array, not a chained iterator): {bad:#?}"
    );
}

#[test]
fn every_call_chain_fits_linux_6_1s_stack() {
    let p = load();
    for program in programs(&p) {
        let (size, chain) = deepest_chain(&p, program);
        assert!(
            size <= MAX_STACK,
            "{program}: its deepest call chain takes {size} bytes with 6.1's 32-byte frames, over {MAX_STACK}: {chain:?}"
        );
        // The main program's frame is measured at all: a frame of 0
        // would mean the r10 accesses were not recognised.
        assert!(chain[0].1 > 0, "{program}: no stack use found");
    }
}
