from PyJEM.TEM3 import EOS3, Def3, Lens3, Stage3  # noqa: F401
