"""fedplug-ray: the ``ray`` transport, many simulated clients on a pool of Ray actors
(:mod:`fedplug_ray.transport`). Ray is imported when a Ray transport is built."""

from fedplug_ray.transport import RayTransport, ray_transport

__all__ = ["RayTransport", "ray_transport"]
