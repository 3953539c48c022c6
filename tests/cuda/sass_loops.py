"""Static instruction mix of a kernel's loops, from a `cuobjdump -sass` dump: for every backward branch (a loop,
nested ones included) its address span, its instruction count and its opcodes, most frequent first. Counts are
static (each instruction of the span once), so a span that holds a branch (e.g. the masked-block path) counts
both sides; `--span LO HI` lists the instructions of one span to read such paths.

  cuobjdump -sass build/bwd_v5all/flash_bwd_sm90_test > ours.sass
  python3 tests/cuda/sass_loops.py ours.sass BwdKernelTraitsIN7cutlass10bfloat16_tELi128ELi64E ELb0EEEvNS0_9BwdParams
  python3 tests/cuda/sass_loops.py ours.sass BwdKernelTraitsIN7cutlass10bfloat16_tELi128ELi64E --span 0x3920 0x3f70

Every NAME_PART must occur in the kernel's mangled name. cuobjdump is not in the CUDA toolkit's compiler-only
install here; `pip download nvidia-cuda-cuobjdump` has it (and nvidia-cuda-nvdisasm, which it needs).
"""

import argparse
import collections
import re

FUNCTION = re.compile(r"Function : (\S+)")
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
PREDICATE = re.compile(r"^@!?U?P\w+\s+")
TARGET = re.compile(r"0x([0-9a-f]+)")
MIN_LOOP_WITHOUT_MMA = 50  # shorter loops without HGMMA are spin-waits, not worth listing


def functions(path):
  """(mangled name, [(address, instruction text)]) per kernel of the dump."""
  name, body = None, []
  for line in open(path):
    if m := FUNCTION.search(line):
      if name:
        yield name, body
      name, body = m.group(1), []
    elif name and (m := INSTRUCTION.search(line)):
      body.append((int(m.group(1), 16), m.group(2)))
  if name:
    yield name, body


def opcode(text):
  return PREDICATE.sub("", text).split()[0].split(".")[0]


def loops(instructions):
  """(first index, last index) of every backward branch's span."""
  index = {address: i for i, (address, _) in enumerate(instructions)}
  for i, (address, text) in enumerate(instructions):
    if opcode(text) != "BRA":
      continue
    target = TARGET.search(text.split("BRA", 1)[1])
    if target and int(target.group(1), 16) < address and int(target.group(1), 16) in index:
      yield index[int(target.group(1), 16)], i


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dump")
  parser.add_argument("name_parts", nargs="+")
  parser.add_argument("--span", nargs=2, type=lambda x: int(x, 16), metavar=("LO", "HI"))
  args = parser.parse_args()
  for name, instructions in functions(args.dump):
    if not all(part in name for part in args.name_parts):
      continue
    print(name, f"({len(instructions)} instructions)")
    if args.span:
      for address, text in instructions:
        if args.span[0] <= address <= args.span[1]:
          print(f"  {address:#07x} {text}")
      continue
    for first, last in loops(instructions):
      mix = collections.Counter(opcode(text) for _, text in instructions[first:last + 1])
      if mix["HGMMA"] == 0 and last - first < MIN_LOOP_WITHOUT_MMA:
        continue
      print(f"  loop {instructions[first][0]:#x}..{instructions[last][0]:#x}: {last - first + 1} instructions; "
            + ", ".join(f"{op} {n}" for op, n in mix.most_common()))


if __name__ == "__main__":
  main()
