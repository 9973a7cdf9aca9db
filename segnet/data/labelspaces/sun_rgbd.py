"""SUN RGB-D's 37 indoor classes as SegNet's SUN models use them: 38 outputs, output 0 is void.

Label 0 marks unlabelled pixels (the released training prototxt ignores it);
classes are 1..37 in the order below. The class weights are the released
SUN training prototxt's (one per output, the void output's included; it is
ignored by the loss). Colours follow Pascal VOC's rule (``voc_palette``).
"""

from segnet.data.labels import LabelSpace, voc_palette

LABEL_SPACE = LabelSpace(
    name="sun-rgbd",
    names=("void", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
           "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
           "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower curtain", "box", "whiteboard",
           "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag"),  # fmt: skip
    void=0,
    palette=voc_palette(38),
    class_weights=(0.351185, 0.382592, 0.447844, 0.634237, 0.375678, 0.582794, 0.476692, 0.776787, 0.980661,
                   1.020118, 0.623396, 2.596563, 0.974491, 0.920240, 0.663878, 1.173357, 0.861062, 0.919955,
                   2.147320, 1.190958, 1.164314, 1.854754, 1.446550, 2.853078, 0.768276, 1.651721, 4.456313,
                   2.205633, 1.116695, 2.781543, 0.705917, 4.005834, 2.208329, 0.967071, 1.475710, 5.347752,
                   0.745528, 4.017548),  # fmt: skip
    source="SUN RGB-D 37 classes (void 0); weights of SegNet-Tutorial's train_segnet_sun.prototxt",
)
