#!/usr/bin/env python3
"""Doc links that read well and resolve.

Rewrites doc comments (`///`, `//!`) in place:

- an intra-doc link whose text is a path with a `crate::`, `super::` or
  `self::` prefix, which rustdoc shows as typed ("crate::wire::LineDecoder"),
  gets a short text and keeps the path as its target:
  [`crate::wire::LineDecoder`] -> [`LineDecoder`](crate::wire::LineDecoder),
  [`crate::Output::Barrier`] -> [`Output::Barrier`](crate::Output::Barrier);
- in chatcore, a "PROTOCOL.md §N" reference becomes a link to that heading
  of the protocol text rendered as `chatcore::protocol`:
  [PROTOCOL.md §3](crate::protocol#3-login).

    fix_doc_links.py [FILE...]     rewrite the files (default: every .rs file)
    fix_doc_links.py --check       fail if anything is left to rewrite, or if
                                   the generated docs (target/doc) show a link
                                   text starting with `crate::` or point at a
                                   protocol heading that does not exist

Run `cargo doc` first for the second half of --check (.ci/run does);
the protocol anchors are checked against chatcore's docs.
"""

import html
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
PREFIXES = ("crate::", "super::", "self::")

DOC_LINE = re.compile(r"^(\s*//[/!])(.*)$")
# [`crate::a::B`] or [crate::a::B], and what follows it.
PREFIXED_LINK = re.compile(
    r"\[(?P<tick>`?)(?P<path>(?:crate|super|self)::[A-Za-z0-9_:]+(?:\(\))?)(?P=tick)\]"
    r"(?P<target>\([^)]*\)|\[[^\]]*\])?"
)
SECTION_REF = re.compile(r"PROTOCOL\.md §(?P<n>\d+)")
SECTION_LINKED = re.compile(r"§\d+[^\[\]]*\]\(crate::protocol#")


def rustdoc_id(heading):
    """The id rustdoc gives a Markdown heading."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def protocol_sections():
    """Section number -> the rustdoc id of its heading."""
    sections = {}
    in_code = False
    for line in PROTOCOL.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        m = re.match(r"^## (\d+)\. (.*)$", line)
        if m and not in_code:
            sections[m.group(1)] = rustdoc_id(line[3:])
    return sections


def short_text(path):
    """`crate::wire::LineDecoder` -> `LineDecoder`; a member keeps its type
    (`crate::Output::Barrier` -> `Output::Barrier`); a module path keeps its
    last module (`crate::tls` -> `tls`)."""
    parts = path.split("::")
    while parts and parts[0] in ("crate", "super", "self"):
        parts.pop(0)
    for i, part in enumerate(parts):
        if part[:1].isupper():
            return "::".join(parts[i:])
    return parts[-1]


def in_chatcore(path):
    """Whether `crate::protocol` is the protocol text: in chatcore's
    library, not in its tests, where `crate` is the test."""
    return path.resolve().is_relative_to(ROOT / "chatcore" / "src")


def fix_line(text, sections, chatcore):
    def link(m):
        target = m.group("target") or f"({m.group('path')})"
        tick = m.group("tick")
        return f"[{tick}{short_text(m.group('path'))}{tick}]{target}"

    text = PREFIXED_LINK.sub(link, text)
    if chatcore:
        out, pos = "", 0
        for m in SECTION_REF.finditer(text):
            before = text[: m.start()]
            # Already a link's text: leave it.
            if before.rstrip().endswith("[") or SECTION_LINKED.match(text, m.start() + 12):
                continue
            anchor = sections.get(m.group("n"))
            if anchor is None:
                continue
            out += text[pos : m.start()] + f"[{m.group(0)}](crate::protocol#{anchor})"
            pos = m.end()
        text = out + text[pos:]
    return text


def rust_files(args):
    if args:
        return [pathlib.Path(a) for a in args]
    skip = {"target", ".git"}
    return sorted(
        p for p in ROOT.rglob("*.rs") if not skip.intersection(p.relative_to(ROOT).parts)
    )


def fix_file(path, sections):
    """The rewritten text of one file, and the lines it changed."""
    chatcore = in_chatcore(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = []
    for i, line in enumerate(lines):
        m = DOC_LINE.match(line.rstrip("\n"))
        if not m:
            continue
        fixed = m.group(1) + fix_line(m.group(2), sections, chatcore)
        if fixed != line.rstrip("\n"):
            changed.append(i + 1)
            lines[i] = fixed + line[len(line.rstrip("\n")) :]
    return "".join(lines), changed


def unlinked_sections(path):
    """Lines of chatcore's docs that cite a section without linking it."""
    if not in_chatcore(path):
        return []
    found = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        m = DOC_LINE.match(line)
        if not m:
            continue
        for s in re.finditer(r"§\d+", m.group(2)):
            if not SECTION_LINKED.match(m.group(2), s.start()):
                found.append(i + 1)
    return found


def check_html(sections):
    """Problems in the generated docs."""
    doc = ROOT / "target" / "doc"
    protocol = doc / "chatcore" / "protocol" / "index.html"
    if not protocol.exists():
        return [f"{protocol.relative_to(ROOT)} is missing: run `cargo doc -p chatcore` first"]
    ids = set(re.findall(r'id="([^"]+)"', protocol.read_text(encoding="utf-8")))
    problems = [
        f"PROTOCOL.md §{n}: no heading with id {a!r} in the rendered protocol"
        for n, a in sections.items()
        if a not in ids
    ]
    link_text = re.compile(r"<a [^>]*>(?:<code>)?((?:crate|super|self)::[^<]*)")
    anchor = re.compile(r'href="([^"#]*protocol/index\.html)#([^"]+)"')
    for page in sorted(doc.rglob("*.html")):
        if "src" in page.relative_to(doc).parts:
            continue
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT)
        for m in link_text.finditer(text):
            problems.append(f"{name}: a link reads {html.unescape(m.group(1))!r}")
        for m in anchor.finditer(text):
            if (page.parent / m.group(1)).resolve() == protocol.resolve() and m.group(2) not in ids:
                problems.append(f"{name}: link to a protocol heading that does not exist: #{m.group(2)}")
    return problems


def main(argv):
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    sections = protocol_sections()
    problems = []
    for path in rust_files(args):
        text, changed = fix_file(path, sections)
        name = path.resolve().relative_to(ROOT)
        if check:
            problems += [f"{name}:{n}: link to rewrite (run .ci/fix_doc_links.py)" for n in changed]
            problems += [f"{name}:{n}: protocol section cited without a link" for n in unlinked_sections(path)]
        elif changed:
            path.write_text(text, encoding="utf-8")
            print(f"{name}: {len(changed)} line(s)")
    if check:
        problems += check_html(sections)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
