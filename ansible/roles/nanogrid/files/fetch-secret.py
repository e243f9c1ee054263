#!/usr/bin/env python3
"""Read one Secrets Manager secret: print it, or write it to a file only when it changed.

Used by the Ansible roles so no secret is ever stored in the repository or the inventory:
  fetch-secret.py --region R SECRET_ID                     print the value (Redis AUTH token)
  fetch-secret.py --region R --output PATH --group G ID    write PATH (0640 root:G) atomically;
                                                           prints "changed" or "unchanged"
"""

from __future__ import annotations

import argparse
import grp
import os
import sys
import tempfile

import boto3


def read_secret(region: str, secret_id: str) -> str:
    secrets = boto3.client("secretsmanager", region_name=region)
    value = secrets.get_secret_value(SecretId=secret_id)
    if "SecretString" in value:
        return value["SecretString"]
    return value["SecretBinary"].decode()


def write_if_changed(path: str, data: str, group: str | None) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret-")
    try:
        os.fchmod(fd, 0o640)
        if group:
            os.fchown(fd, 0, grp.getgrnam(group).gr_gid)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--output")
    parser.add_argument("--group")
    parser.add_argument("secret_id")
    args = parser.parse_args(argv)
    value = read_secret(args.region, args.secret_id)
    if args.output:
        print("changed" if write_if_changed(args.output, value, args.group) else "unchanged")
    else:
        sys.stdout.write(value)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
