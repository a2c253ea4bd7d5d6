"""Whether the Hugging Face hub answers, asked once before a model that must be downloaded loads.

Without a network, huggingface_hub retries each file it cannot fetch five times with back-off
(about 23 s a file, a minute for a model's config and tokenizer files) before transformers gives up.
One request without retries and a short timeout says the same in a second or two.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, is_offline_mode
from huggingface_hub.errors import HfHubHTTPError

from bitune.errors import ModelError, first_line
from bitune.model.source import hub_snapshot, resolve_model_source
from bitune.params import ModelParams

PROBE_TIMEOUT_S = 5.0


def needs_download(model: ModelParams) -> bool:
    """A hub id that is not in the local cache, with offline mode off: loading it goes to the network."""
    source = resolve_model_source(model.name_or_path)
    if source.startswith((".", "/", "~")) or Path(source).expanduser().exists():
        return False  # a local folder (bundled ones too): the loader's own checks name its problems
    return not is_offline_mode() and hub_snapshot(model) is None


def check_hub_reachable(model: ModelParams, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """A ModelError naming the hub address when a model to download cannot be fetched from it.

    Only a failure to connect counts: an answer (found, not found, gated) and an id the hub would
    refuse are left to the loader, whose errors already say what is wrong with the id.
    """
    if not needs_download(model):
        return
    url = hf_hub_url(model.name_or_path, "config.json", revision=model.revision)
    try:
        get_hf_file_metadata(url, timeout=timeout_s)  # no retries: they are what takes a minute
    except HfHubHTTPError:
        return  # the hub answered
    except (httpx2.TransportError, OSError) as exc:
        address = urlparse(constants.ENDPOINT)
        host = f"{address.scheme}://{address.hostname}" + (f":{address.port}" if address.port else "")
        why = first_line(exc, 160)
        raise ModelError(
            f"model.name_or_path: {model.name_or_path!r} is not in the local Hugging Face cache and {host} "
            f"cannot be reached to download it ({why}); connect to the network (or set HF_ENDPOINT to a "
            "mirror), or point model.name_or_path at a local model folder"
        ) from None
    except ValueError:
        return  # not a valid repo id: the loader says so
