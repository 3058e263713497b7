"""The spawn page offers each student the courses their groups allow, with GPU counts."""

from types import SimpleNamespace

from hub.courses import parse_catalog
from hub.spawner import GpuhubSpawner, render_options_form

CATALOG = parse_catalog("""
courses:
  - {slug: base, display_name: TensorFlow 2.9, image: gpuhub/tf:1, default: true}
  - {slug: cs101, display_name: "CS <101>", image: gpuhub/cs101:1, gpus: 1, allow_cpu: true, groups: [cs101]}
  - {slug: research, display_name: Research, image: gpuhub/research:1, gpus: 2, groups: [lab]}
""", "catalog.yaml")


def form_for(groups, summary=None):
    spawner = SimpleNamespace(
        courses=lambda: CATALOG.visible_to(groups),
        gpu_allocator=SimpleNamespace(summary=lambda: summary) if summary else None)
    return render_options_form(spawner)


def test_a_student_sees_only_their_courses_with_free_gpus():
    html = form_for(["cs101"], {"total": 4, "in_use": 3, "free": 1})
    assert 'value="base"' in html and 'value="cs101"' in html
    assert 'value="research"' not in html
    assert "1 GPU (1 of 4 free)" in html
    assert "CS &lt;101&gt;" in html, "names are escaped"
    assert 'name="cpu_only"' in html, "cs101 allows the CPU variant"


def test_a_student_in_no_course_gets_no_form_and_the_default():
    assert form_for([]) == ""


def test_form_data_becomes_user_options():
    options = GpuhubSpawner.options_from_form(None, {"course": ["cs101"], "cpu_only": ["on"]})
    assert options == {"course": "cs101", "cpu_only": True}
