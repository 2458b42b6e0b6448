#!/bin/sh
# Regenerate the hash-locked dependency sets of the offline bundle (needs network and pip-tools,
# which the `dev` extra installs). Run from anywhere after changing dependencies in pyproject.toml:
#   installer/lock.sh            # keep pinned versions where still allowed
#   installer/lock.sh --upgrade  # move every pin to the newest allowed version
# The locks carry the hashes of every published file of each pinned version, so one lock serves
# every Python version and architecture; build-bundle.sh picks the wheels for its target.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
compile=${EDU_PIP_COMPILE:-pip-compile}
cd "$repo"
"$compile" --quiet --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
    --extra postgresql --extra mysql --output-file installer/requirements.lock "$@" pyproject.toml
"$compile" --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
    --output-file installer/build-requirements.lock "$@" installer/build-requirements.in
