#!/usr/bin/env bash
# scripts/corpus.sh [OUT_DIR]  (default data/corpus, gitignored)
#
# A small demo pretraining corpus from Debian packages, mirroring DeepSeek-V3's mix of
# English, Chinese and code (report §4.1):
#   en.jsonl    English: the `fortunes` files, one document per fortune (entries end at a
#               line holding only `%`); kind "text"
#   zh.jsonl    Chinese: `fortunes-zh` (chinese, tang300, song100; UTF-8 already, with ANSI
#               colour escapes that we strip); kind "text"
#   code.jsonl  C++: every file under /usr/include/c++/12 (libstdc++-12-dev), one document
#               each; kind "code"
#   chat.jsonl  conversations built from the three ({"messages": [user, assistant]}): a
#               fortune, a Tang poem or a header's first 40 lines after its licence comments,
#               asked for and answered. They repeat the other files' text: leave chat.jsonl
#               out of a data set whose held-out split should be unseen (scripts/ablation.sh)
# One JSON object per line: {"text": ..., "kind": "text"|"code", "source": ...} (chat.jsonl:
# {"messages": [...], "source": "chat"}). Files and
# entries are read in sorted order, so the output is byte-identical run to run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/corpus}
fortunes=/usr/share/games/fortunes
cxx=/usr/include/c++/12

pkgs=(fortunes fortunes-zh libstdc++-12-dev python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" || { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; }
fi

mkdir -p "$out"
python3 - "$out" "$fortunes" "$cxx" <<'EOF'
import json, os, re, sys

out, fortunes, cxx = sys.argv[1:4]
ZH = ["chinese", "song100", "tang300"]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")   # colour codes in fortunes-zh
OVERSTRIKE = re.compile(r".\x08")             # "_\bX" underlining in old fortune files

def read_text(path):
    raw = open(path, "rb").read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # a few classic fortune files predate UTF-8

def fortune_docs(path):
    text = OVERSTRIKE.sub("", ANSI.sub("", read_text(path)))
    doc = []
    for line in text.split("\n") + ["%"]:
        if line.rstrip("\r") == "%":
            d = "\n".join(doc).strip("\n")
            if d.strip():
                yield d + "\n"
            doc = []
        else:
            doc.append(line)

def is_fortune_file(name):
    p = os.path.join(fortunes, name)
    return (os.path.isfile(p) and not os.path.islink(p) and "." not in name)

stats = {}
def write(fname, docs):
    n = b = 0
    with open(os.path.join(out, fname + ".tmp"), "w", encoding="utf-8", newline="\n") as f:
        for text, kind, source in docs:
            f.write(json.dumps({"text": text, "kind": kind, "source": source},
                               ensure_ascii=False) + "\n")
            n += 1
            b += len(text.encode("utf-8"))
    os.replace(os.path.join(out, fname + ".tmp"), os.path.join(out, fname))
    stats[fname] = (n, b)

names = sorted(n for n in os.listdir(fortunes) if is_fortune_file(n))
en = [n for n in names if n not in ZH]
write("en.jsonl", ((d, "text", "fortunes/" + n) for n in en
                   for d in fortune_docs(os.path.join(fortunes, n))))
write("zh.jsonl", ((d, "text", "fortunes-zh/" + n) for n in ZH if n in names
                   for d in fortune_docs(os.path.join(fortunes, n))))
code = []
for root, dirs, files in os.walk(cxx):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(root, f)
        if os.path.isfile(p):
            code.append((read_text(p), "code", "libstdc++-12/" + os.path.relpath(p, cxx)))
code.sort(key=lambda c: c[2])
write("code.jsonl", code)

# chat.jsonl: conversations in the OpenAI "messages" form, so that the demo model learns
# DeepSeek-V3's chat format (dsv3 data prepare renders them with its template) and answers
# through dsv3 serve: a request for a fortune answered with a short English fortune, one for
# a Tang poem with a poem of tang300, one for a libstdc++ header with the header's opening.
# The user turns are fixed phrasings taken in turn, so the file is deterministic too.
ASK_FORTUNE = ["Tell me a fortune.", "Give me a fortune cookie.", "Say something wise.",
               "Do you have a quote for me?", "Cheer me up with a fortune.", "Tell me something."]
ASK_POEM = ["写一首唐诗。", "来一首诗。", "请背一首唐诗。"]
ASK_HEADER = ["Show me the libstdc++ header {}.", "What does {} look like?", "Print the start of {}."]
chats = []
fortune_texts = [d for n in en for d in fortune_docs(os.path.join(fortunes, n))
                 if len(d.encode("utf-8")) <= 400]
for i, d in enumerate(fortune_texts):
    chats.append([ASK_FORTUNE[i % len(ASK_FORTUNE)], d.strip()])
if "tang300" in names:
    for i, d in enumerate(fortune_docs(os.path.join(fortunes, "tang300"))):
        chats.append([ASK_POEM[i % len(ASK_POEM)], d.strip()])
def code_body(text):  # the lines after the leading licence comments
    lines, i = text.split("\n"), 0
    while i < len(lines):
        t = lines[i].strip()
        if t == "" or t.startswith("//"):
            i += 1
        elif t.startswith("/*"):
            while i < len(lines) and "*/" not in lines[i]:
                i += 1
            i += 1
        else:
            break
    return lines[i:]
for i, (text, _, source) in enumerate(code):
    body = code_body(text)
    head = "\n".join(body[:40]).strip()
    if not head:
        continue
    name = source.split("/", 1)[1]
    chats.append([ASK_HEADER[i % len(ASK_HEADER)].format("<" + name + ">"), head])
n = b = 0
with open(os.path.join(out, "chat.jsonl.tmp"), "w", encoding="utf-8", newline="\n") as f:
    for q, a in chats:
        f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                         {"role": "assistant", "content": a}],
                            "source": "chat"}, ensure_ascii=False) + "\n")
        n += 1
        b += len(q.encode("utf-8")) + len(a.encode("utf-8"))
os.replace(os.path.join(out, "chat.jsonl.tmp"), os.path.join(out, "chat.jsonl"))
stats["chat.jsonl"] = (n, b)

tot_n = sum(n for n, _ in stats.values())
tot_b = sum(b for _, b in stats.values())
for k, (n, b) in stats.items():
    print(f"{os.path.join(out, k)}: {n} docs, {b} bytes ({b / 1e6:.2f} MB)")
print(f"total: {tot_n} docs, {tot_b} bytes; kind text: "
      f"{stats['en.jsonl'][1] + stats['zh.jsonl'][1]} bytes, kind code: {stats['code.jsonl'][1]} "
      f"bytes, chat: {stats['chat.jsonl'][1]} bytes")
EOF
