# Tokenizer references (js-tiktoken, GPT-2's files) for test_tiktoken_parity: a CTest fixture
# fetches them into ${CMAKE_BINARY_DIR}/tokref once; the parity tests require it.
# Included from tests/CMakeLists.txt after the test executables are defined.
set(LMF_TOKREF_DIR ${CMAKE_BINARY_DIR}/tokref)
add_test(NAME fetch_tokenizer_refs
         COMMAND ${PROJECT_SOURCE_DIR}/scripts/fetch_tokenizer_refs.sh ${LMF_TOKREF_DIR})
set_tests_properties(fetch_tokenizer_refs PROPERTIES FIXTURES_SETUP tokref LABELS integration
                     TIMEOUT 300)
if(TARGET test_tiktoken_parity)
  target_compile_definitions(test_tiktoken_parity PRIVATE LMF_TOKREF_DIR="${LMF_TOKREF_DIR}")
  # The parity cases are discovered at build time, so their fixture is set in a CTest include
  # file that runs after gtest_discover_tests' own (it defines test_tiktoken_parity_TESTS).
  set(props ${CMAKE_CURRENT_BINARY_DIR}/tokref_fixture.cmake)
  file(WRITE ${props}
       "if(DEFINED test_tiktoken_parity_TESTS)\n"
       "  set_tests_properties(\${test_tiktoken_parity_TESTS} PROPERTIES FIXTURES_REQUIRED tokref)\n"
       "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${props})
endif()
