"""What every benchmark records beside its numbers: the machine it ran on."""
import os
import platform
import re


def machine_info() -> dict:
    """CPU model, cores, a file-name slug, Python and platform (no Jittor import: workers stay light)."""
    model = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count() or 1
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return {"cpu": model, "cores": cores, "slug": f"{slug}-{cores}c", "python": platform.python_version(),
            "platform": platform.platform(), "hostname": platform.node(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}
