"""fedplug's showcase: ``fedplug demo`` (:mod:`fedplug_demo.cli`) and the embedded federation it
runs on (:mod:`fedplug_demo.demo`: the breast-cancer data, its label-skewed split, the nodes)."""
