"""The environment a kernel gets: the host's, minus anything that looks like a secret.

Generated code is untrusted, and the first thing a prompt-injected step would do is read
``os.environ``. So the kernel starts from a copy of the host environment with these removed:

* every variable whose **name** contains ``KEY``, ``TOKEN``, ``SECRET``, ``PASSWORD``,
  ``PASSWD``, ``CREDENTIAL``, ``AUTH`` or ``COOKIE``, or ends in ``_PASS`` / ``_PWD``
  (case-insensitive; so ``SSH_AUTH_SOCK`` and ``XAUTHORITY`` go too);
* the model-provider and cloud families, whatever the rest of the name: ``OPENAI_*``,
  ``ANTHROPIC_*``, ``AWS_*``, ``AZURE_*``, ``GOOGLE_*``, ``GEMINI_*``, ``GCP_*``, ``GCLOUD_*``,
  ``MISTRAL_*``, ``COHERE_*``, ``GROQ_*``, ``TOGETHER_*``, ``DEEPSEEK_*``, ``OPENROUTER_*``,
  ``HF_*``, ``HUGGING_FACE_*``, ``REPLICATE_*``, ``FIREWORKS_*``, ``XAI_*``, ``PERPLEXITY_*``,
  ``OLLAMA_*`` and nbagent's own ``NBAGENT_*``;
* every variable whose **value** embeds a credential: a URL with ``user:password@``
  (``DATABASE_URL``, ``HTTPS_PROXY``), or a well-known token shape (``sk-…``, ``ghp_…``,
  ``github_pat_…``, ``xox?-…``, ``AKIA…``, ``AIza…``, ``hf_…``, a PEM private key).

``passthrough`` names variables to keep anyway — the deliberate ``--env NAME`` escape hatch.

This closes the obvious door, not every door: a kernel running as the same user can still read
the host's ``/proc/<pid>/environ``, the user's files and the session's runtime files. Only a
kernel under another user or on another machine (a Kernel Gateway) closes those; see
docs/architecture.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["is_secret", "scrub_env"]

_NAME_WORDS = re.compile(
    r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|_PASS$|_PWD$", re.IGNORECASE
)
_PREFIXES = (
    "OPENAI_",
    "ANTHROPIC_",
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "GEMINI_",
    "GCP_",
    "GCLOUD_",
    "MISTRAL_",
    "COHERE_",
    "GROQ_",
    "TOGETHER_",
    "DEEPSEEK_",
    "OPENROUTER_",
    "HF_",
    "HUGGING_FACE_",
    "REPLICATE_",
    "FIREWORKS_",
    "XAI_",
    "PERPLEXITY_",
    "OLLAMA_",
    "NBAGENT_",
)
_VALUE_SHAPES = re.compile(
    r"[a-z][a-z0-9+.\-]*://[^/\s:@]*:[^/\s@]+@"  # scheme://user:password@host
    r"|\bsk-[A-Za-z0-9_\-]{16,}"  # OpenAI / Anthropic style keys
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bAIza[0-9A-Za-z_\-]{30,}"  # Google API key
    r"|\bhf_[A-Za-z0-9]{20,}"  # Hugging Face
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----",
    re.IGNORECASE,
)


def is_secret(name: str, value: str) -> bool:
    """True when ``name=value`` must not reach generated code (the rule in the module doc)."""
    upper = name.upper()
    return (
        bool(_NAME_WORDS.search(upper))
        or upper.startswith(_PREFIXES)
        or bool(_VALUE_SHAPES.search(value))
    )


def scrub_env(environ: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """Return a copy of ``environ`` without secrets, keeping the names in ``passthrough``.

    Args:
        environ: The environment to copy (usually ``os.environ``).
        passthrough: Variable names to keep even though they look secret; names that are not
            set are ignored.

    Returns:
        A new dict; ``environ`` is not changed.
    """
    keep = set(passthrough)
    return {k: v for k, v in environ.items() if k in keep or not is_secret(k, v)}
