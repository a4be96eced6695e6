"""Docker image references as the engine reads them, checked when the policy is loaded.

The grammar is that of distribution/reference (``reference.go`` and ``regexp.go``, the package the Docker
CLI and engine parse every image name with), ported here as regular expressions:

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path
    domain           := host [ ":" port ]              host: DNS-like name, IPv4, or [IPv6]
    path             := path-component [ "/" path-component ]*
    path-component   := [a-z0-9]+ ( ( [._] | __ | -+ ) [a-z0-9]+ )*
    tag              := [\\w][\\w.-]{0,127}
    digest           := algorithm ":" hex{32,}           algorithm: [A-Za-z][A-Za-z0-9]* ( [-_+.] ... )*

plus its rule that the path is at most 255 characters. Which part of a name is the domain is decided the
way the grammar decides it: the first component, when one follows it after a "/", is the domain if it
matches ``domain`` (so ``Big/app`` names registry host ``Big``, while ``app/Big`` is invalid).

The regular expression decides validity; ``problems`` only explains, in words, why a string fails.
No docker, ansible or community.docker module in the environment offers a validator (the docker SDK and
community.docker only split names), hence this port.
"""

from __future__ import annotations

import itertools
import re

# regexp.go, term by term.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_OPTIONAL_PORT = r"(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_HOST = r"(?:" + _DOMAIN_NAME + "|" + _IPV6 + ")"
_DOMAIN_AND_PORT = _HOST + _OPTIONAL_PORT
_PATH_COMPONENT = _ALPHANUMERIC + r"(?:" + _SEPARATOR + _ALPHANUMERIC + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_NAME = r"(?:" + _DOMAIN_AND_PORT + r"/)?" + _REMOTE_NAME

# Python's \w is Unicode-aware; Go's is ASCII only: re.ASCII keeps the port faithful.
REFERENCE_RE = re.compile(r"^(" + _NAME + r")(?::(" + _TAG + r"))?(?:@(" + _DIGEST + r"))?$", re.ASCII)
_ANCHORED_NAME_RE = re.compile(r"^(?:(" + _DOMAIN_AND_PORT + r")/)?(" + _REMOTE_NAME + r")$", re.ASCII)
_DOMAIN_RE = re.compile(r"^" + _DOMAIN_AND_PORT + r"$", re.ASCII)
_TAG_RE = re.compile(r"^" + _TAG + r"$", re.ASCII)
_DIGEST_RE = re.compile(r"^" + _DIGEST + r"$", re.ASCII)
_PATH_COMPONENT_RE = re.compile(r"^" + _PATH_COMPONENT + r"$", re.ASCII)

PATH_MAX = 255  # reference.go RepositoryNameTotalLengthMax
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@[]")
_WILDCARDS = frozenset("*?[]!")
_FILLERS = ("a", "", ":a", "/a", "a" * 64, "sha256:" + "a" * 64)  # what a wildcard is tried as (see pattern_problems)
_MAX_COMBINED_WILDCARDS = 4


def is_valid(reference: str) -> bool:
    """Return whether ``reference`` is a valid image reference (``name[:tag][@digest]``) for Docker."""
    match = REFERENCE_RE.match(reference)
    if match is None:
        return False
    name = _ANCHORED_NAME_RE.match(match.group(1))
    path = name.group(2) if name else match.group(1)
    return len(path) <= PATH_MAX


def is_valid_domain(domain: str) -> bool:
    """Return whether ``domain`` is a valid registry name: ``host[:port]`` (``registry.local:5000``)."""
    return _DOMAIN_RE.match(domain) is not None


def is_valid_registry(registry: str) -> bool:
    """Return whether ``registry`` is ``host[:port][/namespace]`` (``127.0.0.55:5000/acgs``): where images go."""
    domain, _, namespace = registry.partition("/")
    if not _DOMAIN_RE.match(domain):
        return False
    return not namespace or re.match(r"^" + _REMOTE_NAME + r"$", namespace, re.ASCII) is not None


def problems(reference: str) -> list[str]:
    """Return why ``reference`` is not a valid image reference, in words (empty when it is valid)."""
    if is_valid(reference):
        return []
    if not reference:
        return ["an image reference cannot be empty"]
    found = _character_problems(reference, allowed=_ALLOWED)
    if "://" in reference:
        return [*found, "a URL scheme is not allowed (write registry.example.com/app:1, without https://)"]
    rest, _, digest = reference.partition("@")
    if "@" in reference and not _DIGEST_RE.match(digest):
        found.append("the digest after '@' must be algorithm:hex with at least 32 hex digits, like sha256:<64 hex>")
    name, tag = _split_tag(rest)
    if tag is not None and not _TAG_RE.match(tag):
        found.append(_tag_problem(tag))
    found += _name_problems(name, explained=bool(found))
    found = list(dict.fromkeys(found))  # in order, once each
    return found or ["it does not follow [registry[:port]/]name[:tag][@digest]"]


def describe(reference: str) -> str | None:
    """Return a one-line reason why ``reference`` is not a valid image reference, or None when it is."""
    found = problems(reference)
    return "; ".join(found) if found else None


def pattern_problems(pattern: str) -> list[str]:
    """Return why the fnmatch ``pattern`` can match no valid image reference (empty when it can).

    ``*``, ``?`` and ``[...]`` are wildcards. The pattern is accepted when its wildcards can stand for strings
    that make it a valid reference: each is tried as "a", nothing, ":a", "/a" and 64 hex digits (every
    combination for up to four wildcards, one filler for all of them beyond). Anything else that a reference
    cannot contain (spaces, uppercase letters in the repository path, ...) is reported as for a reference.
    """
    if not pattern:
        return ["an image pattern cannot be empty"]
    found = _character_problems(pattern, allowed=_ALLOWED | _WILDCARDS)
    if found:
        return found
    pieces = _wildcard_pieces(pattern)
    holes = sum(1 for p in pieces if p is None)
    if holes <= _MAX_COMBINED_WILDCARDS:
        choices = itertools.product(_FILLERS, repeat=holes)
    else:
        choices = ((f,) * holes for f in _FILLERS)
    for fillers in choices:
        it = iter(fillers)
        if is_valid("".join(p if p is not None else next(it) for p in pieces)):
            return []
    # Explain with the plainest stand-in: every wildcard as "a".
    candidate = "".join(p if p is not None else "a" for p in pieces)
    return problems(candidate)


def describe_pattern(pattern: str) -> str | None:
    """Return a one-line reason why the fnmatch ``pattern`` matches no valid reference, or None when it can."""
    found = pattern_problems(pattern)
    return "; ".join(found) if found else None


def _wildcard_pieces(pattern: str) -> list[str | None]:
    """Split an fnmatch pattern into literal text and wildcards (None), as fnmatch reads it."""
    pieces: list[str | None] = []
    i, n = 0, len(pattern)
    literal = ""
    while i < n:
        c = pattern[i]
        if c in "*?":
            pieces += [literal, None]
            literal = ""
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            j = pattern.find("]", j)
            if j == -1:  # fnmatch reads an unclosed "[" as itself
                literal += c
                i += 1
            else:
                pieces += [literal, None]
                literal = ""
                i = j + 1
        else:
            literal += c
            i += 1
    pieces.append(literal)
    return pieces


def _character_problems(text: str, allowed: frozenset[str]) -> list[str]:
    found = []
    if not text:
        return ["an image reference cannot be empty"]
    for ch in dict.fromkeys(text):
        if ch in allowed:
            continue
        if ch == " ":
            found.append("a space is not allowed")
        elif ch.isspace():
            found.append(f"whitespace ({ch!r}) is not allowed")
        else:
            found.append(f"{ch!r} is not allowed")
    return found


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    """Split ``name[:tag]``: the tag follows the last ':' that comes after the last '/'."""
    slash = name_and_tag.rfind("/")
    colon = name_and_tag.rfind(":")
    if colon > slash:
        return name_and_tag[:colon], name_and_tag[colon + 1 :]
    return name_and_tag, None


def _tag_problem(tag: str) -> str:
    if not tag:
        return "a ':' must be followed by a tag"
    if len(tag) > 128:
        return f"the tag is {len(tag)} characters long; at most 128 are allowed"
    return "a tag must start with a letter, digit or '_' and hold only letters, digits, '_', '.' and '-'"


def _name_problems(name: str, explained: bool) -> list[str]:
    """Return what is wrong with the ``[domain/]path`` part; ``explained``: a bad character was already named."""
    if not name:
        return ["the repository name is missing"]
    components = name.split("/")
    if len(components) > 1 and _DOMAIN_RE.match(components[0]):
        domain, path = components[0], components[1:]
    else:
        domain, path = None, components
        if len(components) > 1 and (":" in components[0] or "." in components[0]) and not explained:
            host, _, port = components[0].partition(":")
            if port and not port.isdigit():
                return [f"the registry port {port!r} must be a number"]
            return [f"{components[0]!r} is not a valid registry host[:port]"]
    found = []
    if any(c != c.lower() for c in path):
        found.append("uppercase letters are not allowed in a repository name")
    if any(not c for c in path):
        found.append("the repository name has an empty part ('//' or a '/' at an end)")
    for c in path:
        if explained or ":" in c:
            break
        if c and not _PATH_COMPONENT_RE.match(c.lower()):
            found.append(
                "each part of a repository name must start and end with a lowercase letter or digit, with only "
                "'.', '_', '__' or '-' between them"
            )
            break
    if len("/".join(path)) > PATH_MAX:
        found.append(f"the repository name is longer than {PATH_MAX} characters")
    if domain is None and ":" in name:
        found.append("a ':' is allowed only before the tag or after a registry host")
    return found
