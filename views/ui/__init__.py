"""UI helpers shared by the pages. A subpackage, so Streamlit never lists these modules as pages."""
