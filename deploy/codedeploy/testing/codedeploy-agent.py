#!/usr/bin/env python3
"""Does with a revision archive what the CodeDeploy agent does on an instance, for the deployment rehearsal
(scripts/rehearse-deploy.sh runs it inside the booted container); never used on an instance.

    codedeploy-agent.py ARCHIVE.zip DEPLOYMENT_ID

Like the agent (EC2/on-premises, in-place):
  - unpacks the archive into <root>/<group id>/<deployment id>/deployment-archive, keeping the modes stored in
    the zip, and reads appspec.yml from its top;
  - ApplicationStop runs the hooks of the last deployment that succeeded here, from that deployment's own
    archive (none on a first deployment), then BeforeInstall;
  - Install copies each `files` entry from the archive to its destination (file_exists_behavior: OVERWRITE,
    else the agent's default DISALLOW fails on an existing file), then applies `permissions`;
  - AfterInstall, ApplicationStart, ValidateService;
  - each hook is a script inside the archive, run as `runas` (root unless named), made executable if it is not,
    with the agent's variables (LIFECYCLE_EVENT, DEPLOYMENT_ID, APPLICATION_NAME, DEPLOYMENT_GROUP_NAME,
    DEPLOYMENT_GROUP_ID), killed at its `timeout` (default 3600 s); a non-zero exit or a timeout fails the
    deployment there;
  - on success, records the deployment as the last one for the next ApplicationStop.
Prints one line per lifecycle event; the hooks' output goes to <root>/deployment-logs/codedeploy-agent-deployments.log.
Exits 0 when the deployment succeeded, 1 when a lifecycle event failed, 2 on a malformed revision.
"""
import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import yaml

AGENT_ROOT = os.environ.get("CODEDEPLOY_AGENT_ROOT", "/opt/codedeploy-agent/deployment-root")
APPLICATION = os.environ.get("CODEDEPLOY_APPLICATION", "upshot")
GROUP_NAME = os.environ.get("CODEDEPLOY_GROUP_NAME", "upshot-fleet")
GROUP_ID = "rehearsal-group-0000"
LAST = os.path.join(AGENT_ROOT, "deployment-instructions", f"{GROUP_ID}_last_successful_install")
LOG = os.path.join(AGENT_ROOT, "..", "deployment-logs", "codedeploy-agent-deployments.log")


class RevisionError(Exception):
    pass


def unpack(archive, dest):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o7777
            if mode and not info.is_dir():
                os.chmod(path, mode)


def read_appspec(archive_dir):
    path = os.path.join(archive_dir, "appspec.yml")
    if not os.path.isfile(path):
        raise RevisionError("appspec.yml not found at the top of the revision")
    spec = yaml.safe_load(open(path))
    if str(spec.get("version")) != "0.0" or spec.get("os") != "linux":
        raise RevisionError("appspec.yml: version 0.0 and os linux expected")
    for event, entries in (spec.get("hooks") or {}).items():
        for entry in entries:
            script = os.path.join(archive_dir, entry["location"].lstrip("/"))
            if not os.path.isfile(script):
                raise RevisionError(f"{event}: script {entry['location']} is not in the revision")
    return spec


def run_hooks(spec, archive_dir, event, deployment_id, log):
    for entry in (spec.get("hooks") or {}).get(event, []):
        script = os.path.join(archive_dir, entry["location"].lstrip("/"))
        if not os.access(script, os.X_OK):
            os.chmod(script, os.stat(script).st_mode | 0o111)
        timeout = int(entry.get("timeout", 3600))
        user = entry.get("runas", "root")
        command = [script] if user == pwd.getpwuid(os.getuid()).pw_name else ["runuser", "-u", user, "--", script]
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LIFECYCLE_EVENT": event,
            "DEPLOYMENT_ID": deployment_id,
            "APPLICATION_NAME": APPLICATION,
            "DEPLOYMENT_GROUP_NAME": GROUP_NAME,
            "DEPLOYMENT_GROUP_ID": GROUP_ID,
        }
        log.write(f"[{deployment_id} {event}] {entry['location']} (runas {user}, timeout {timeout} s)\n")
        log.flush()
        process = subprocess.Popen(command, cwd="/", env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"{entry['location']} timed out after {timeout} s"
        if rc != 0:
            return f"{entry['location']} exited {rc}"
    return None


def install(spec, archive_dir):
    behavior = spec.get("file_exists_behavior", "DISALLOW")
    for entry in spec.get("files") or []:
        source = os.path.join(archive_dir, entry["source"].lstrip("/"))
        destination = entry["destination"]
        if os.path.isdir(source):
            for top, _dirs, names in os.walk(source):
                relative = os.path.relpath(top, source)
                os.makedirs(os.path.join(destination, relative), exist_ok=True)
                for name in names:
                    copy_file(os.path.join(top, name), os.path.join(destination, relative, name), behavior)
        else:
            copy_file(source, os.path.join(destination, os.path.basename(source)), behavior)
    for entry in spec.get("permissions") or []:
        apply_permissions(entry)


def copy_file(source, target, behavior):
    if os.path.lexists(target):
        if behavior == "DISALLOW":
            raise RevisionError(f"Install: {target} exists and file_exists_behavior is DISALLOW")
        if behavior == "RETAIN":
            return
    shutil.copy2(source, target)


def apply_permissions(entry):
    top = entry["object"]
    kinds = entry.get("type", ["file", "directory"])
    uid = pwd.getpwnam(entry["owner"]).pw_uid if "owner" in entry else -1
    gid = grp.getgrnam(entry["group"]).gr_gid if "group" in entry else -1

    def apply(path):
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)
        if "mode" in entry:
            os.chmod(path, int(str(entry["mode"]), 8))

    if os.path.isfile(top):
        if "file" in kinds:
            apply(top)
        return
    for base, dirs, names in os.walk(top):
        # The object itself is not changed, only what is below it (as the agent does).
        if "directory" in kinds:
            for name in dirs:
                apply(os.path.join(base, name))
        if "file" in kinds:
            for name in names:
                apply(os.path.join(base, name))


def main():
    archive, deployment_id = sys.argv[1], sys.argv[2]
    deployment_dir = os.path.join(AGENT_ROOT, GROUP_ID, deployment_id)
    archive_dir = os.path.join(deployment_dir, "deployment-archive")
    os.makedirs(os.path.dirname(LAST), exist_ok=True)
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    try:
        unpack(archive, archive_dir)
        spec = read_appspec(archive_dir)
    except (RevisionError, zipfile.BadZipFile, yaml.YAMLError, KeyError) as error:
        print(f"  {deployment_id} DownloadBundle: failed: {error}")
        return 2
    previous = open(LAST).read().strip() if os.path.exists(LAST) else None

    with open(LOG, "a") as log:
        for event in ("ApplicationStop", "DownloadBundle", "BeforeInstall", "Install", "AfterInstall",
                      "ApplicationStart", "ValidateService"):
            started = time.monotonic()
            error = None
            if event == "ApplicationStop":
                if previous is None:
                    print(f"  {deployment_id} ApplicationStop: skipped (no earlier deployment on this instance)")
                    continue
                previous_dir = os.path.join(previous, "deployment-archive")
                error = run_hooks(read_appspec(previous_dir), previous_dir, event, deployment_id, log)
            elif event == "DownloadBundle":
                pass
            elif event == "Install":
                try:
                    install(spec, archive_dir)
                except (RevisionError, OSError, KeyError) as failure:
                    error = str(failure)
            else:
                error = run_hooks(spec, archive_dir, event, deployment_id, log)
            took = time.monotonic() - started
            if error:
                print(f"  {deployment_id} {event}: failed ({took:.1f} s): {error}")
                return 1
            print(f"  {deployment_id} {event}: succeeded ({took:.1f} s)")
    with open(LAST, "w") as last:
        last.write(deployment_dir + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
