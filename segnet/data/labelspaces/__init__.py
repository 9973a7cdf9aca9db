"""One module per label space: each defines ``LABEL_SPACE`` (a :class:`segnet.data.labels.LabelSpace`).

``segnet.data.labels.get_label_space(name)`` finds them by their ``name``; a new data
set's classes are one new file here (or a JSON file given to the commands).
"""
