#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what benchmarks/gpu_check.sh needs on the lent GPU machine, which
# cannot download anything: the wheels medad needs that its Python 3.12 lacks (the device tool's
# package list: pydantic and its parts, pydicom, nibabel) and the 224-px chest X-ray dev set, in
# .gpu/ (git-ignored; the device tool's `carry`, at most 64 MiB with the working tree).
#   benchmarks/gpu_prepare.sh            # then: run(command="benchmarks/gpu_check.sh", carry=[".gpu"])
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${MEDAD_DATA_DIR:-../shared/data}
rm -rf .gpu && mkdir -p .gpu/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/wheels \
    pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    typing-extensions==4.16.0 pydicom==3.0.2 nibabel==5.4.2
cp -r "$DATA/chest_xray_covid_224" .gpu/
du -sh .gpu .gpu/*
