"""Worked examples that train real models with the tf-dcn layers.

* ``python -m tf_dcn.examples.rfcn``: a small R-FCN detector (RPN, proposals, position-sensitive
  score and box maps) trained with ``model.fit`` with plain and with deformable PS-RoI pooling,
  evaluated with pycocotools (``pip install tf-dcn[detection]``).
"""
